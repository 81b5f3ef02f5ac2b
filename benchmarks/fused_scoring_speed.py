"""Calibration time with and without the fast FPCS scoring paths, in one process.

The fast paths: compiled (torch.compile) candidate fake-quant and error kernels, Gram
matrix output MSEs for Linear inputs / q of q @ k^T / Linear weights where they cost fewer
FLOPs, and Linear weight candidates scored from exact int8 products on a CPU. The reference
run turns them all off (``MMQ_COMPILE=0 MMQ_GRAM=0 MMQ_INT=0``); ``--reference no-int``
turns off only the int8 products, to measure them alone; ``--reference no-token`` only the
dynamic token quantizer's compiled no-autograd kernel (its clip search and passes then take
the straight-through formula, as before that kernel), for ``--config w8-tokens7-g8`` (W8A4,
every token role in blocks of 8: the ``-w8-tokens7-g8`` accuracy rows).

    python benchmarks/fused_scoring_speed.py [--blocks 2] [--images 8] [--threads 1]
                                             [--device cuda] [--reference no-int]
                                             [--config w8-tokens7-g8 --reference no-token]

A DINOv2 ViT-S/14-shaped ``mmq.TimmViTDet`` (the converted DINOv2 weights when
``checkpoints/dinov2/vit_small_patch14_dinov2.pth`` exists, else the fine-tuned ViT of the
committed ``dinov2`` demo detector, else random weights of the same shape) cut to
``--blocks`` blocks, W4A4 AdaLog + FPCS on ``--images`` 256x320 inputs
(320 patch tokens). Runs eager, then fast (a first one-image run compiles and is timed apart:
compiling is a once-per-process cost), and prints both times, their ratio and each unit's
output SQNR. ``--device`` runs both on that device (model and images moved there;
tools/device_check.sh uses it on a GPU).
"""
import argparse
import copy
import os
import os.path as osp
import time

import torch

import mmq
from mmq.models.backbones.vit_det import TimmViTDet
from mmq.quantizers import token_quantizer

CONFIGS = {'w4a4': dict(w_bits=4, a_bits=4),
           'w8-tokens7-g8': dict(w_bits=8, a_bits=4, token_group_size=8, token_roles=[
               'ln_input', 'proj_input', 'qk', 'post_gelu', 'other', 'v', 'post_softmax'])}
WEIGHTS = 'checkpoints/dinov2/vit_small_patch14_dinov2.pth'
DETECTOR = 'checkpoints/demo/mask-rcnn_dinov2-vits14_shapes.pth'


def _sync(device: str) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--blocks', type=int, default=2)
    parser.add_argument('--images', type=int, default=8)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--reference', default='eager', choices=['eager', 'no-int', 'no-token'],
                        help='eager: every fast path off; no-int: only the int8 products off; '
                        "no-token: only the token quantizer's compiled kernel off")
    parser.add_argument('--config', default='w4a4', choices=list(CONFIGS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = TimmViTDet(img_size=518, patch_size=14, feature_stride=16, embed_dims=384,
                          depth=args.blocks, num_heads=6, init_values=1e-5, class_token=True,
                          out_channels=64, scales=(4.0, 2.0, 1.0, 0.5)).eval()
    state = None
    if osp.isfile(WEIGHTS):
        state = torch.load(WEIGHTS, weights_only=True)
    elif osp.isfile(DETECTOR):  # the dinov2 testbed's fine-tuned ViT-S/14 (committed)
        state = torch.load(DETECTOR, weights_only=True, map_location='cpu')
        state = {k[len('backbone.vit.'):]: v for k, v in state.get('state_dict', state).items()
                 if k.startswith('backbone.vit.')}
    if state is not None:
        backbone.vit.load_state_dict({k: v for k, v in state.items() if not k.startswith(
            'blocks.') or int(k.split('.')[1]) < args.blocks})
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, 256, 320, generator=g).to(args.device)
              for _ in range(args.images)]
    backbone.to(args.device)
    cfg = CONFIGS[args.config]
    results = {}
    flags = dict(eager=['MMQ_COMPILE', 'MMQ_GRAM', 'MMQ_INT'], no_int=['MMQ_INT'],
                 no_token=[])[args.reference.replace('-', '_')]
    token_kernel = token_quantizer._fake_quant_no_grad
    warmup = 0.0
    for mode in ('0', '1'):
        for flag in flags:
            os.environ[flag] = mode
        if args.reference == 'no-token':  # None: take the straight-through formula
            token_quantizer._fake_quant_no_grad = (
                token_kernel if mode == '1' else lambda *a: None)
        if os.environ.get('MMQ_COMPILE', '1') != '0':
            # Compile once (cached for the rest of the process), timed apart: the same
            # config on one image meets the same kernel variants as the timed run.
            _sync(args.device)
            start = time.perf_counter()
            mmq.quantize(copy.deepcopy(backbone), images[:1], cfg)
            _sync(args.device)
            warmup += time.perf_counter() - start
        _sync(args.device)
        start = time.perf_counter()
        report = mmq.quantize(copy.deepcopy(backbone), images, cfg)
        _sync(args.device)
        results[mode] = (time.perf_counter() - start,
                         {u['unit']: round(u['output_sqnr_db'], 3) for u in
                          report['units']})
    (t_eager, sq_eager), (t_fused, sq_fused) = results['0'], results['1']
    print(f'{args.reference} {t_eager:.1f} s, fast {t_fused:.1f} s, '
          f'speed-up {t_eager / t_fused:.2f}x '
          f'({args.config}, {args.blocks} blocks, {args.images} images, '
          f'{args.threads} thread(s), '
          f'device {args.device}); compile warm-up (one image per compiled run, not timed) '
          f'{warmup:.1f} s')
    for unit in sq_eager:
        print(f'  {unit}: unit output SQNR {args.reference} {sq_eager[unit]}, '
              f'fast {sq_fused[unit]}')


if __name__ == '__main__':
    main()
