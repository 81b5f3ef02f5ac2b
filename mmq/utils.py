"""Small helpers shared by the tools and benchmarks."""
import fcntl
import hashlib
import json
import os
import os.path as osp
from typing import Callable, Optional


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class WorkDirLock:
    """An exclusive, non-blocking lock on ``work_dir/.mmq.lock`` for the duration of a
    ``with`` block: a second run in the same work dir stops with a clear error instead of
    overwriting or resuming the first one's files. The OS releases it if the process dies."""

    def __init__(self, work_dir: str) -> None:
        self.path = osp.join(work_dir, '.mmq.lock')
        self._fd = None

    def __enter__(self) -> 'WorkDirLock':
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f'another mmq run is calibrating in {osp.dirname(self.path)} '
                               '(it holds .mmq.lock): wait for it, or use another --work-dir.')
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def atomic_write(path: str, write: Callable[[str], object]) -> str:
    """``write(tmp)`` then rename ``tmp`` to ``path``: a reader (or a crash) never sees half a
    file. The temporary name carries the process id, so two writers never share it."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return path


def write_json(path: str, obj: dict, indent: Optional[int] = 1) -> str:
    """Write ``obj`` to ``path`` as JSON, atomically."""

    def dump(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=indent)

    return atomic_write(path, dump)


def write_metrics(work_dir: str, metrics: dict, seconds: float, peak_rss_kb: int) -> str:
    """Write ``work_dir/metrics.json``: the evaluator's metrics, the wall time and the
    process's peak resident memory."""
    os.makedirs(work_dir, exist_ok=True)
    return write_json(
        osp.join(work_dir, 'metrics.json'),
        dict(metrics={k: float(v) for k, v in metrics.items()}, seconds=seconds,
             peak_rss_mb=peak_rss_kb / 1024))


# Each random stream of a calibration run: (multiplier of the run's seed, offset, step per
# index). The values are those the streams have always used, so seeded results are unchanged.
_SEED_STREAMS = {
    'images': (1, 0, 0),  # which calibration images are drawn
    'calibrate': (100003, 0, 1),  # row sampling of unit ``index``
    'ln_search': (100003, 50021, 1),  # LayerNorm range-search rows of unit ``index``
    'detector': (100003, 99991, 0),  # neck / heads row sampling
    'mr': (1000003, 7, 0),  # MLP reconstruction rows
    'reconstruct': (1000003, 1, 17),  # QDrop masks and batches of unit ``index``
    'reconstruct_neck': (1000003, 999983, 0),
    'reconstruct_box_head': (1000003, 999979, 13),  # of box-head stage ``index``
}


def seeded_generator(seed: int, stream: str, index: int = 0):
    """The CPU generator of one random stream of a run seeded ``seed`` (one derivation for
    every stream, so streams never share draws)."""
    import torch
    if stream not in _SEED_STREAMS:
        raise ValueError(f'unknown random stream {stream!r}; streams: {list(_SEED_STREAMS)}.')
    multiplier, offset, step = _SEED_STREAMS[stream]
    return torch.Generator().manual_seed(seed * multiplier + offset + step * index)
