"""Attention-output reparameterization on real weights: proj's calibrated output SQNR with and
without ``proj_reparam``, only proj's input at 4 bits.

    python benchmarks/proj_reparam_sqnr.py [--blocks 3] [--images 2]

Calibrates the ``dinov2`` demo detector's DINOv2 ViT-S/14 backbone cut to ``--blocks`` blocks
on ``--images`` training images at 256x320 (W8A8 with ``role_bits=dict(proj_input=4)``, default
search settings), once without and once with ``proj_reparam``, and prints each block's proj
output SQNR from the calibration report.
"""
import argparse
import copy

import torch
from torch import nn

import mmq
from dinov2_demo import float_detector, training_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--blocks', type=int, default=3)
    parser.add_argument('--images', type=int, default=2)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = float_detector().backbone
    backbone.vit.blocks = nn.Sequential(*list(backbone.vit.blocks)[:args.blocks])
    images = training_images(args.images)
    for on in (False, True):
        report = mmq.quantize(copy.deepcopy(backbone), images,
                              dict(w_bits=8, a_bits=8, role_bits=dict(proj_input=4),
                                   proj_reparam=on))
        sqnr = [f"{layer['sqnr_db']:.1f}" for unit in report['units']
                for layer in unit['layers'] if layer['name'].endswith('attn.proj')]
        print(f"proj_reparam={on}: proj output SQNR per block (dB): {', '.join(sqnr)}",
              flush=True)


if __name__ == '__main__':
    main()
