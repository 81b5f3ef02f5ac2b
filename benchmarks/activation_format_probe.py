"""Which 4-bit activation formats lose least on the ``dinov2`` detector's real activations:
the inputs of the token-quantized Linears and both operands of ``A @ v`` of every third block,
captured on held-out images from a calibrated row, each quantized in several formats at
clip 1 (no calibration), SQNR against the captured tensor.

    python benchmarks/activation_format_probe.py [--state WORK_DIR/stage_calibrate.pth]

``_fzp``: the same INT4 blocks with the grid from each block's minimum to its maximum
(``quant_cfg.token_zero_point='float'``) instead of one that contains 0.
Linear inputs (rows = tokens): INT4 per token, in blocks of 16 / 8 features, FP4 (E2M1
elements, one absmax scale per block of 16, as NVFP4), and a block-Hadamard rotation of 16 /
64 / 128 features before INT4 blocks of 16 (the rotation is orthogonal: the error is the same
in both bases; QuaRot-style, folded into the weight); fc2's input also in blocks of 8 after its
features are sorted by RMS (``quant_cfg.mlp_channel_sort``; the RMS taken on the same rows).
``v`` (B * heads, tokens, d): the state's own quantizer (``own``), INT4 per channel column over
the tokens, and in blocks of 16 / 32 tokens. ``A`` (post-Softmax): its own quantizer, INT4
per query row, in blocks of 16 keys, and a log quantizer (base 2 / sqrt 2, 16 levels below the
row's or block's max).
A minute here; the seconds-long screen behind the `-tokens7-gN` accuracy rows.
"""
import math
from typing import Callable, Dict, List

import torch
from torch import Tensor

from dinov2_demo import state_backbone_args, training_images
from mmq.quantizers import token_fake_quant
from mmq.quantizers.token_quantizer import group_tokens
from mmq.quantizers.objectives import sqnr_db

STATE = 'benchmarks/results/accuracy/dinov2/w4a4_adalog-fpcs-w8-tokens5-g16/stage_calibrate.pth'
ONE = torch.tensor(1.0)
FP4_LEVELS = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6])


def int4(x: Tensor, axis: int = -1, group=None, float_zero_point: bool = False) -> Tensor:
    """Asymmetric INT4, one min / max range per token (per block of ``group``); the grid
    contains 0 (integer zero point) or spans the range (``float_zero_point``)."""
    return token_fake_quant(x, ONE, 4, axis, group, float_zero_point)


def fp4(x: Tensor, group: int) -> Tensor:
    """E2M1 elements with one absmax scale per block of ``group`` features (last axis)."""
    blocks = x.reshape(*x.shape[:-1], -1, group)
    scale = blocks.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 6
    mag = (blocks / scale).abs().unsqueeze(-1)
    nearest = FP4_LEVELS[(mag - FP4_LEVELS).abs().argmin(-1)]
    return (nearest * blocks.sign() * scale).reshape(x.shape)


def hadamard(n: int) -> Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def rotated(x: Tensor, n: int, quant: Callable[[Tensor], Tensor]) -> Tensor:
    """``quant`` in a basis rotated by block-Hadamard matrices of size ``n``, rotated back."""
    h = hadamard(n)
    blocks = x.reshape(*x.shape[:-1], -1, n)
    return (quant((blocks @ h).reshape(x.shape)).reshape(blocks.shape) @ h.t()).reshape(x.shape)


def log_quant(x: Tensor, base: float, group=None) -> Tensor:
    """16 powers of ``base`` below each row's (block's of ``group``) max, below them 0."""
    if group is not None:  # the token quantizer's blocks, a partial last one padded alike
        blocks, _ = group_tokens(x, ONE, -1, group)
        return log_quant(blocks, base).flatten(-2)[..., :x.shape[-1]]
    top = x.amax(-1, keepdim=True).clamp_min(1e-12)
    exp = torch.round(-torch.log(x.clamp_min(1e-30) / top) / math.log(base))
    return torch.where(exp > 15, torch.zeros_like(x), top * base**(-exp))


def sorted_by_rms(quant: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``quant`` on the features sorted by their RMS over the rows (``mlp_channel_sort``)."""
    def run(x: Tensor) -> Tensor:
        perm = torch.argsort(x.pow(2).mean(0), stable=True)
        out = torch.empty_like(x)
        out[:, perm] = quant(x[:, perm])
        return out
    return run


LINEAR = dict(
    tok=lambda x: int4(x), g16=lambda x: int4(x, -1, 16), g8=lambda x: int4(x, -1, 8),
    g16_fzp=lambda x: int4(x, -1, 16, True), g8_fzp=lambda x: int4(x, -1, 8, True),
    fp4_g16=lambda x: fp4(x, 16),
    **{f'H{n}_g16': (lambda n: lambda x: rotated(x, n, lambda y: int4(y, -1, 16)))(n)
       for n in (16, 64, 128)})
VALUE = dict(col=lambda v: int4(v, -2), col_g32=lambda v: int4(v, -2, 32),
             col_g16=lambda v: int4(v, -2, 16), col_g16_fzp=lambda v: int4(v, -2, 16, True))
SOFTMAX = dict(row=lambda a: int4(a), row_g16=lambda a: int4(a, -1, 16),
               row_g16_fzp=lambda a: int4(a, -1, 16, True),
               log2_row=lambda a: log_quant(a, 2.0), log2_g16=lambda a: log_quant(a, 2.0, 16),
               logsqrt2_row=lambda a: log_quant(a, 2**0.5),
               logsqrt2_g16=lambda a: log_quant(a, 2**0.5, 16))


def main() -> None:
    backbone, args = state_backbone_args(__doc__, STATE, images=2, threads=1)
    captured: Dict[str, List[tuple]] = {}

    def capture(name):
        def hook(module, inputs, out):
            captured.setdefault(name, []).append((inputs[0].detach(), out.detach()))
        return hook

    for i, block in list(enumerate(backbone.vit.blocks))[::3]:
        attn, mlp = block.attn, block.mlp
        for name, q in (('qkv', attn.qkv.input_quantizer), ('proj', attn.proj.input_quantizer),
                        ('fc1', mlp.fc1.input_quantizer), ('fc2', mlp.fc2.input_quantizer),
                        ('v', attn.av_matmul.b_quantizer), ('A', attn.av_matmul.a_quantizer)):
            q.register_forward_hook(capture(f'{i}.{name}'))
    with torch.no_grad():
        for image in training_images(args.images, split='val'):
            backbone(image)
    print(f'{args.state}: SQNR (dB) of each format, {args.images} val images, clip 1')
    for name, pairs in captured.items():
        kind = name.split('.')[1]
        if kind in ('v', 'A'):
            x = torch.cat([t.flatten(0, 1) for t, _ in pairs])
            own = torch.cat([o.flatten(0, 1) for _, o in pairs])
            formats = dict(own=lambda _: own, **(VALUE if kind == 'v' else SOFTMAX))
        else:
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t, _ in pairs])
            formats = dict(LINEAR, **(dict(g8_sorted=sorted_by_rms(lambda y: int4(y, -1, 8)))
                                      if kind == 'fc2' else {}))
        cells = [f'{k} {sqnr_db(x, f(x)):.2f}' for k, f in formats.items()]
        print(f'  {name:7s} ' + ' | '.join(cells), flush=True)


if __name__ == '__main__':
    main()
