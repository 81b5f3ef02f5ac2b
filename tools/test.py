"""Evaluate a (float) detector with its config's own evaluator (mmdet's test.py, trimmed).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options k=v ...]

Writes ``metrics.json`` (metrics, wall time, peak RSS) to the work dir.
"""
import argparse
import os.path as osp
import resource
import time

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from mmq.float_checkpoint import loadable_checkpoint
from mmq.utils import write_metrics


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='evaluate a detector (mmengine Runner.test)')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir', help='where logs and metrics.json go')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint!r} does not exist.')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.load_from = args.checkpoint
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = loadable_checkpoint(cfg.load_from, cfg.work_dir)
    start = time.perf_counter()
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    write_metrics(cfg.work_dir, metrics, time.perf_counter() - start,
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


if __name__ == '__main__':
    main()
