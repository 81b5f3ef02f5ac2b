"""Small helpers shared by the tools and benchmarks."""
import json
import os
import os.path as osp


def write_json(path: str, obj: dict) -> str:
    """Write ``obj`` to ``path`` atomically (a reader never sees half a file)."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
    return path


def write_metrics(work_dir: str, metrics: dict, seconds: float, peak_rss_kb: int) -> str:
    """Write ``work_dir/metrics.json``: the evaluator's metrics, the wall time and the
    process's peak resident memory."""
    os.makedirs(work_dir, exist_ok=True)
    return write_json(
        osp.join(work_dir, 'metrics.json'),
        dict(metrics={k: float(v) for k, v in metrics.items()}, seconds=seconds,
             peak_rss_mb=peak_rss_kb / 1024))
