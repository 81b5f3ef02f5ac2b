"""Quantize an mmdet detector and evaluate it with the config's own evaluator.

    python tools/quantize.py CONFIG CHECKPOINT [--work-dir DIR] [--quant-state STATE]
        [--resume-from STAGE_FILE]
        [--num-images N] [--calib-on-eval-set] [--cfg-options k=v ...] [--launcher pytorch]

CONFIG is a detector config that inherits a quant preset from configs/_base_/quant/ (or any
config, with --quant-cfg to merge one). The work dir receives quantized_state.pth and
calibration_report.json (per stage ``stage_<name>.pth``); the metrics are mmdet's CocoMetric
output, also written to metrics.json with the wall time and peak memory.
"""
import argparse
import os
import os.path as osp
import resource
import time

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from mmq.float_checkpoint import loadable_checkpoint
from mmq.utils import write_metrics

HOOK_TYPE = 'mmq.QuantCalibrationHook'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='mmq: quantize and evaluate a detector')
    parser.add_argument('config', help='detector config with a quant preset in _base_')
    parser.add_argument('checkpoint', help='the float checkpoint')
    parser.add_argument('--work-dir', help='where results, state and report are written')
    parser.add_argument('--quant-cfg', help='a quant preset to merge (configs/_base_/quant/*.py)')
    parser.add_argument('--quant-state', help='load this saved quantized state instead of '
                        'calibrating')
    parser.add_argument('--resume-from', help='start from a saved stage result '
                        '(WORK_DIR/stage_<name>.pth of an earlier run) and run the stages after '
                        'it')
    parser.add_argument('--num-images', type=int,
                        help="calibration images (default: the config's hook: 32 in the "
                        'presets, 256 in the APHQ ones)')
    parser.add_argument('--calib-on-eval-set', action='store_true',
                        help='calibrate on the evaluation set (not recommended)')
    parser.add_argument('--show-dir', help='save drawn predictions here (mmdet visualizer)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_config(args: argparse.Namespace) -> Config:
    if not osp.isfile(args.config):
        raise SystemExit(f'config {args.config!r} does not exist.')
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint!r} does not exist: give the float '
                         'checkpoint of this detector.')
    cfg = Config.fromfile(args.config)
    if args.quant_cfg:
        cfg.merge_from_dict(Config.fromfile(args.quant_cfg).to_dict())
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.load_from = args.checkpoint
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.setdefault('custom_imports', dict(imports=['mmq'], allow_failed_imports=False))
    hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') == HOOK_TYPE]
    if not hooks:
        raise SystemExit(f'{args.config} has no {HOOK_TYPE}: add a preset from '
                         'configs/_base_/quant/ to its _base_, or pass --quant-cfg.')
    for hook in hooks:
        if args.quant_state:
            hook['load_state'] = args.quant_state
        if args.resume_from:
            if not osp.isfile(args.resume_from):
                raise SystemExit(f'--resume-from {args.resume_from!r} does not exist.')
            hook['resume_from'] = args.resume_from
        if args.num_images is not None:
            if args.num_images < 1:
                raise SystemExit(f'--num-images {args.num_images}: give at least 1 image.')
            hook['num_images'] = args.num_images
        if args.calib_on_eval_set:
            hook['use_eval_set'] = True
    if args.show_dir:
        cfg.default_hooks.visualization.draw = True
        cfg.default_hooks.visualization.test_out_dir = args.show_dir
    return cfg


def init_cpu_distributed(cfg: Config) -> None:
    """mmengine's pytorch launcher calls ``torch.cuda.set_device``, which fails without a GPU:
    on a CPU-only machine start the gloo process group here and let the Runner find it."""
    import torch
    import torch.distributed as dist
    if cfg.launcher != 'pytorch' or torch.cuda.is_available() or dist.is_initialized():
        return
    dist.init_process_group(backend='gloo')
    cfg.launcher = 'none'  # the group exists: samplers and metrics are distributed by it


def main() -> None:
    args = parse_args()
    cfg = build_config(args)
    cfg.load_from = loadable_checkpoint(cfg.load_from, cfg.work_dir)
    init_cpu_distributed(cfg)
    start = time.perf_counter()
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    if not metrics:
        raise SystemExit('[mmq] the evaluation returned no metrics: check the test dataset '
                         'and test_evaluator (nothing was evaluated).')
    runner.logger.info(f'[mmq] quantized model metrics: {metrics}')
    write_metrics(cfg.work_dir, metrics, time.perf_counter() - start,
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


if __name__ == '__main__':
    main()
