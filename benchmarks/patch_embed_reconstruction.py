"""Why block reconstruction keeps the DINOv2 patch embedding calibrated: its loss before, with
soft rounding, and hardened, at several rounding learning rates.

    python benchmarks/patch_embed_reconstruction.py [--state WORK_DIR/stage_calibrate.pth]

Needs the ``dinov2`` W4A4 calibrate-only row of the accuracy benchmark (its
``stage_calibrate.pth``). Reconstructs only the patch-embedding unit on 8 training images at
256x320 with a uniform (all-ones) channel importance, 300 iterations, batch 2, and prints,
per setting, the loss before, with soft rounding at the end of training, after hardening,
and the share of rounding variables settled at 0 or 1.
"""
import argparse
import copy
import time

import torch

from dinov2_demo import calibrated_detector, training_images

from mmq.calibration.activation_store import ActivationStore
from mmq.calibration.block_calibration import chain_outputs
from mmq.calibration.block_reconstruction import reconstruct_unit
from mmq.calibration.units import build_units
from mmq.config.aphq_options import ReconstructOptions

STATE = 'benchmarks/results/accuracy/dinov2/w4a4_adalog-fpcs/stage_calibrate.pth'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--state', default=STATE)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = calibrated_detector(args.state)
    store = ActivationStore(2**31)
    for image in training_images(8):
        store.append((image, ))
    unit = build_units(model.backbone)[0]
    targets = chain_outputs(unit, store, quant=False)
    saved = copy.deepcopy(unit.module.state_dict())
    for round_lr in (0.1, 0.01, 0.001):
        unit.module.load_state_dict(saved)
        opts = ReconstructOptions(iters=300, batch=2, lr=4e-5, round_lr=round_lr, aph_images=8)
        start = time.perf_counter()
        r = reconstruct_unit(unit, store, store, targets, torch.ones(384), opts,
                             torch.Generator().manual_seed(1))
        print(f"round_lr {round_lr}: loss before {r['loss_before']:.4f}, soft "
              f"{r['loss_soft']:.4f}, hardened {r['loss_trained']:.4f}, settled "
              f"{r['rounding_settled']:.3f}, reverted {r['reverted']} "
              f'({time.perf_counter() - start:.1f} s)', flush=True)


if __name__ == '__main__':
    main()
