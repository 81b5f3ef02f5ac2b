"""The ``dinov2`` demo detector and its training images, for the unit-level benchmarks."""
import argparse
import copy
import glob
import os.path as osp
import tempfile
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np
import torch
from mmengine.config import Config
from mmengine.runner import Runner, load_checkpoint
from torch import nn

from mmq.calibration.quantize import prepare
from mmq.calibration.quantized_state import load_partial_state
from mmq.config import QuantConfig
from mmq.config.detector_config import build_detector

CONFIG = 'configs/demo/mask-rcnn_dinov2-vits14_fpn_shapes.py'
CHECKPOINT = 'checkpoints/demo/mask-rcnn_dinov2-vits14_shapes.pth'
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def float_detector() -> nn.Module:
    """The trained ``dinov2`` demo detector in float32, eval mode."""
    model = build_detector(CONFIG)
    load_checkpoint(model, CHECKPOINT, map_location='cpu')
    return model.float().eval()


def row_test_runner(row_cfg: Config, prefix: str, float_copy: bool = False
                    ) -> Tuple[Runner, Optional[nn.Module]]:
    """A Runner on an accuracy-benchmark row's config as written (``row_cfg``: its test set
    and mmdet metric; no calibration hook, no checkpoint loaded, a temporary work dir named
    ``prefix``...) and, with ``float_copy``, the float detector as built before any
    quantization (MR included), with the row's checkpoint."""
    cfg = copy.deepcopy(row_cfg)
    cfg.custom_hooks = []  # saved states are loaded by the caller, not calibrated again
    cfg.load_from = None
    cfg.model.backbone.pretrained = None
    cfg.work_dir = tempfile.mkdtemp(prefix=prefix)
    runner = Runner.from_cfg(cfg)
    fp_model = None
    if float_copy:
        fp_model = copy.deepcopy(runner.model).eval()
        load_checkpoint(fp_model, row_cfg.load_from, map_location='cpu', logger='silent')
    return runner, fp_model


def row_runner(row: str, state: str, prefix: str, float_copy: bool = False
               ) -> Tuple[Runner, dict, Config, Optional[nn.Module]]:
    """:func:`row_test_runner` on the row in work dir ``row`` whose model holds the row's
    saved stage ``state`` (quantizers prepared, eval mode). Returns the runner, the saved
    partial state, the row's config as written (hooks, checkpoint) and the float copy."""
    partial = load_partial_state(state)
    if partial is None:
        raise SystemExit(f'{state} does not exist: run that accuracy-benchmark row first.')
    row_cfg = Config.fromfile(osp.join(row, 'config.py'))
    runner, fp_model = row_test_runner(row_cfg, prefix, float_copy)
    model = runner.model
    prepare(model, QuantConfig.from_dict(partial['quant_cfg']))
    model.load_state_dict(partial['state_dict'])
    model.eval()
    return runner, partial, row_cfg, fp_model


def row_calibration_batches(runner: Runner, row_cfg: Config) -> List[dict]:
    """The row's calibration images (its hook's count and seed) as preprocessed detector
    batches, as ``mmq.quantize`` receives them."""
    from mmq.hooks import QuantCalibrationHook
    hook_cfg = next((h for h in row_cfg.get('custom_hooks', [])
                     if 'QuantCalibrationHook' in str(h.get('type'))), {})
    hook = QuantCalibrationHook(num_images=hook_cfg.get('num_images', 32),
                                seed=hook_cfg.get('seed', 0))
    model = runner.model
    return [model.data_preprocessor(b, False) for b in hook.calibration_loader(runner)]


def evaluate_runner(runner: Runner, label: str) -> dict:
    """``runner.test()`` (mmdet's metric on the row's test set); prints box / mask AP."""
    metrics = runner.test()
    print(f"{label}: box AP {metrics['coco/bbox_mAP']:.3f}, mask AP "
          f"{metrics['coco/segm_mAP']:.3f}", flush=True)
    return metrics


def calibrated_detector(state: str) -> nn.Module:
    """The float detector with a calibration stage's saved state (``stage_calibrate.pth`` of
    an accuracy-benchmark row) loaded, eval mode."""
    partial = load_partial_state(state)
    if partial is None:
        raise SystemExit(f'{state} does not exist: run the dinov2 W4A4 adalog-fpcs row of '
                         'benchmarks/accuracy_benchmark.py first.')
    model = float_detector()
    prepare(model, QuantConfig.from_dict(partial['quant_cfg']))
    model.load_state_dict(partial['state_dict'])
    return model.eval()


def training_images(num: int, size=(256, 320), split: str = 'train') -> List[torch.Tensor]:
    """The first ``num`` shapes images of ``split``, resized to ``size`` and normalised."""
    images = []
    for path in sorted(glob.glob(f'data/shapes/{split}/*.png'))[:num]:
        im = cv2.resize(cv2.imread(path)[:, :, ::-1], size[::-1]).astype(np.float32)
        images.append((torch.from_numpy(im.copy()).permute(2, 0, 1)[None] - MEAN) / STD)
    return images


def state_backbone_args(doc: str, state: str, images: int, threads: int
                        ) -> Tuple[nn.Module, argparse.Namespace]:
    """The command line of a probe on a calibrated state's backbone (``--state``,
    ``--images``, ``--threads``, defaults as given): the backbone (threads set) and the
    parsed arguments."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument('--state', default=state)
    parser.add_argument('--images', type=int, default=images)
    parser.add_argument('--threads', type=int, default=threads)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return calibrated_detector(args.state).backbone, args


def run_state_probe(doc: str, mode: str, change: Callable[[nn.Module, List[torch.Tensor]], None],
                    prefix: str) -> None:
    """The command line of a probe on a row's saved stage: ``--row``, ``--state``,
    ``--images`` and ``--mode none|<mode>``; with ``mode``, ``change(model, training images)``
    edits the loaded model before mmdet's metric evaluates it (one thread)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument('--row', required=True, help="an accuracy-benchmark row's work dir")
    parser.add_argument('--state', help='saved stage (default: the row\'s stage_calibrate.pth)')
    parser.add_argument('--images', type=int, default=32)
    parser.add_argument('--mode', choices=('none', mode), default=mode)
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = args.state or osp.join(args.row, 'stage_calibrate.pth')
    runner, _, _, _ = row_runner(args.row, state, prefix)
    if args.mode == mode:
        change(runner.model, training_images(args.images, split='train'))
    metrics = runner.test()
    print(f"{state} ({args.mode}, {args.images} images): box AP "
          f"{metrics['coco/bbox_mAP']:.3f}, mask AP {metrics['coco/segm_mAP']:.3f}", flush=True)
