"""Why a reconstructed block ends worse than its calibration: reconstruction variants on the
DINOv2 demo detector cut to its first blocks.

    python benchmarks/rounding_revert_diagnosis.py [--bits 6] [--blocks 1] [--images 32]
                                                   [--variants '{"name": {option: value}}']

The detector (``configs/demo/mask-rcnn_dinov2-vits14_fpn_shapes.py`` with the committed
checkpoint) keeps its first ``--blocks`` ViT blocks (then the pyramid, FPN and heads as
trained), is calibrated (AdaLog + FPCS, WbAb) on ``--images`` training images and
reconstructed with the accuracy benchmark's demo schedule changed by each variant's options
(``quant_cfg.reconstruct``). Per unit it prints the APH-weighted loss before, with soft
rounding after training, and hardened, whether the unit was reverted, the share of rounding
variables settled at 0 / 1, and how the learned rounding differs from rounding to nearest:
the share of weights rounded the other way and, for those, the mean distance of ``w / s``'s
fractional part from 0.5 (0: only near-ties flipped; up to 0.5: weights that sat on a grid
point moved to the next one). The learned rounding of a reverted unit is read where the
stage hands it to the weight quantizer, before the revert discards it.
"""
import argparse
import copy
import json
import os.path as osp
import sys

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/demo/mask-rcnn_dinov2-vits14_fpn_shapes.py'
CHECKPOINT = 'checkpoints/demo/mask-rcnn_dinov2-vits14_shapes.pth'
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
from accuracy_benchmark import REC_DEMO  # noqa: E402

VARIANTS = {
    'demo schedule': {},
    'no QDrop': dict(drop_prob=0.0),
    'activation scales fixed': dict(lr=1e-12),
    'round_lr 0.01': dict(round_lr=0.01),
    'no warm-up': dict(warmup=0.0),
}


def truncated_detector(blocks: int):
    """The demo detector with only its first ``blocks`` ViT blocks, its checkpoint loaded."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(osp.join(ROOT, CONFIG))
    cfg.model.backbone.update(pretrained=None, depth=blocks, frozen_blocks=blocks)
    cfg.work_dir = osp.join(ROOT, 'work_dirs', 'rounding_revert_diagnosis')
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    state = torch.load(osp.join(ROOT, CHECKPOINT), weights_only=True)['state_dict']
    state = {k: v for k, v in state.items()
             if not (k.startswith('backbone.vit.blocks.') and int(k.split('.')[3]) >= blocks)}
    runner.model.load_state_dict(state, strict=True)
    return runner


class RoundingRecorder:
    """Keeps every learned rounding the reconstruction stage hands to a weight quantizer."""

    def __init__(self) -> None:
        from mmq.quantizers.uniform_quantizer import UniformQuantizer
        orig, self.seen = UniformQuantizer.set_rounding, []
        seen = self.seen

        def set_rounding(quantizer, rounding):
            seen.append((quantizer, rounding.detach().clone()))
            return orig(quantizer, rounding)

        UniformQuantizer.set_rounding = set_rounding

    def flips(self, model) -> dict:
        """Per layer: (share rounded against nearest, mean |frac - 0.5| of those)."""
        owner = {id(m.weight_quantizer): (n, m) for n, m in model.named_modules()
                 if getattr(m, 'weight_quantizer', None) is not None}
        out = {}
        for quantizer, rounding in self.seen:
            if id(quantizer) not in owner:
                continue
            name, layer = owner[id(quantizer)]
            v = layer.weight.detach() / quantizer.scale
            frac = v - torch.floor(v)
            flipped = rounding != (frac >= 0.5).to(rounding.dtype)
            dist = float((frac - 0.5).abs()[flipped].mean()) if flipped.any() else 0.0
            out[name] = (float(flipped.float().mean()), dist)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bits', type=int, default=6)
    parser.add_argument('--blocks', type=int, default=1)
    parser.add_argument('--images', type=int, default=32)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--variants', type=json.loads, default=VARIANTS,
                        help='JSON {name: reconstruct options changed from the demo schedule}')
    args = parser.parse_args()
    import mmq
    from mmq.hooks.quant_calibration_hook import QuantCalibrationHook
    torch.set_num_threads(args.threads)
    runner = truncated_detector(args.blocks)
    batches = list(QuantCalibrationHook(num_images=args.images).calibration_loader(runner))
    base = copy.deepcopy(runner.model).eval()
    recorder = RoundingRecorder()
    print(f'W{args.bits}A{args.bits}, DINOv2 demo detector cut to {args.blocks} block(s), '
          f'{len(batches)} images; demo schedule {REC_DEMO}')
    print('| variant | unit | loss before | soft | hardened | reverted | settled | '
          'flipped vs nearest | mean |frac - 0.5| of flipped |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name, options in args.variants.items():
        model = copy.deepcopy(base)
        recorder.seen.clear()
        qcfg = dict(w_bits=args.bits, a_bits=args.bits, stages=['calibrate', 'reconstruct'],
                    reconstruct=dict(REC_DEMO, **options))
        report = mmq.quantize(model, batches, qcfg)
        flips = recorder.flips(model)
        for unit in report['units']:
            if 'loss_before' not in unit:
                continue
            layers = [v for k, v in flips.items() if k.startswith(f"backbone.{unit['unit']}.")]
            share = sum(f for f, _ in layers) / max(1, len(layers))
            dist = sum(d for _, d in layers) / max(1, len(layers))
            print(f"| {name} | {unit['unit']} | {unit['loss_before']:.5g} | "
                  f"{unit['loss_soft']:.5g} | {unit['loss_trained']:.5g} | "
                  f"{'yes' if unit['reverted'] else 'no'} | {unit['rounding_settled']:.3f} | "
                  f'{share:.3f} | {dist:.3f} |', flush=True)


if __name__ == '__main__':
    main()
