"""The dynamic per-token uniform quantizer (beyond the published methods).

Every token (one row of a Linear input, one query row of ``q`` or of the post-Softmax
matrix, one key column of ``k^T``, one channel column of ``v``, whose features are the tokens)
gets its own asymmetric ``(s, z)`` from its own range at run time, shrunk by a calibrated
clip ratio ``c``:

    lo = c * min(min_j x_j, 0),  hi = c * max(max_j x_j, 0),  s = (hi - lo) / (2^b - 1),
    z = round(-lo / s),  x_hat = (clamp(round(x / s) + z, 0, 2^b - 1) - z) * s

An integer kernel keeps one scale per row of its left operand (per column of its right one)
and applies it to the int32 accumulator, so ``x_hat @ W_q^T = s_row * (codes - z_row) @
W_q^T``: the cost is one min / max reduction per token at run time. Static per-tensor scales
(the published methods) must cover the largest token of the calibration set; DINOv2's
high-norm tokens make that range wide for every other token.

With ``zero_point='float'`` (beyond the published methods) the grid runs from the clipped
minimum to the clipped maximum, ``x_hat = lo + s * clamp(round((x - lo) / s), 0, 2^b - 1)``
with ``s = (hi - lo) / (2^b - 1)`` and no widening to contain 0: a token's (group's) smallest
and largest values are kept exactly, where an integer zero point shifts the grid by up to
``s / 2``. With block scaling this costs the kernel nothing more: it already adds each
group's ``zero point x (sum of that group's weights)`` term, here ``lo`` times the same sums.
(On real ViT activations in blocks of 8 at 4 bits: +1.1-1.3 dB SQNR, fc2's input more;
``benchmarks/activation_format_probe.py``.)

With ``group_size`` (beyond the published methods) a token's features are split into
consecutive groups of that many, each with its own ``(s, z)``: block scaling along the
reduction axis, as the OCP microscaling (MX) formats do with 32-element blocks. The kernel
then accumulates each group's integer products apart and scales them before summing, so the
cost is one scale per group instead of per token. A width the group size does not divide
(e.g. a token count, for v and the post-Softmax matrix, whose features are tokens / keys)
ends with a partial group.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from mmq.registry import QUANTIZERS
from .base_quantizer import BaseQuantizer
from .fused_scores import token_fake_quant as fused_token_fake_quant
from .uniform import fake_quant_span, fake_quant_uniform, range_to_params
from .validation import UNIFORM_BITS, check_finite


def group_tokens(x: Tensor, clip: Tensor, feature_axis: int,
                 group_size: Optional[int]) -> Tuple[Tensor, Tensor]:
    """``x`` with ``feature_axis`` split into ``(ceil(features / group_size), group_size)``
    (the group's own features on ``feature_axis``, counted from the end as before) and
    ``clip`` shaped to broadcast against it; both unchanged when ``group_size`` is ``None``.
    A last, partial group is padded with copies of its own last feature (its range is its own
    features' range), as a block-scaled kernel pads the reduction axis to whole blocks."""
    if group_size is None:
        return x, clip
    axis = feature_axis % x.dim()
    features = x.shape[axis]
    pad = -features % group_size
    if pad:
        shape = list(x.shape)
        shape[axis] = pad
        x = torch.cat([x, x.narrow(axis, features - 1, 1).expand(shape)], dim=axis)
    grouped = x.reshape(*x.shape[:axis], -1, group_size, *x.shape[axis + 1:])
    return grouped, (clip.unsqueeze(-1) if clip.dim() else clip)


def token_fake_quant(x: Tensor, clip: Tensor, bits: int, feature_axis: int = -1,
                     group_size: Optional[int] = None, float_zero_point: bool = False
                     ) -> Tensor:
    """Fake-quantize ``x`` with one ``(s, z)`` per token (per group of ``group_size`` of its
    features), the range taken along ``feature_axis`` and scaled by ``clip`` (broadcasts
    against ``x`` with a leading candidate axis: ``clip`` of shape ``(K, 1, ..., 1)`` gives
    ``K`` candidates); ``float_zero_point``: the grid from the clipped minimum to the clipped
    maximum (module docstring). The rounding has a straight-through gradient; the range is
    differentiable."""
    grouped, clip = group_tokens(x, clip, feature_axis, group_size)
    out = _fake_quant_no_grad(grouped, clip, bits, feature_axis, float_zero_point)
    if out is None and float_zero_point:  # with autograd: the same formulas, straight-through
        out = fake_quant_span(grouped, clip, 2**bits - 1, feature_axis)
    elif out is None:
        scale, zero_point = token_params(grouped, clip, bits, feature_axis)
        out = fake_quant_uniform(grouped, scale, zero_point, bits)
    if group_size is None:
        return out
    axis = feature_axis if feature_axis < 0 else feature_axis - x.dim()
    out = out.flatten(axis - 1, axis)  # the groups back into one feature axis
    features = x.shape[feature_axis]
    return out if out.shape[axis] == features else out.narrow(axis, 0, features)


def _fake_quant_no_grad(x: Tensor, clip: Tensor, bits: int, feature_axis: int,
                        float_zero_point: bool) -> Optional[Tensor]:
    """The same fake-quant without autograd through one canonical kernel (compiled for large
    tensors: the clip search's candidates, calibration and evaluation passes), or ``None``
    when a gradient is wanted or ``clip`` is not one ratio (per candidate)."""
    if torch.is_grad_enabled() and (x.requires_grad or clip.requires_grad):
        return None
    k = clip.shape[0] if clip.dim() else 1
    if clip.dim() not in (0, x.dim()) or clip.numel() != k or (k > 1 and x.shape[0] != 1):
        return None
    axis = feature_axis % x.dim()
    canonical = x.reshape(1, math.prod(x.shape[:axis]), x.shape[axis], -1)
    out = fused_token_fake_quant(canonical, clip.reshape(k, 1, 1, 1).to(x.dtype),
                                 torch.tensor(2**bits - 1, dtype=x.dtype, device=x.device),
                                 float_zero_point)
    return out.reshape(k, *x.shape[1:]) if k > 1 else out.reshape(x.shape)


def token_params(x: Tensor, clip: Tensor, bits: int, feature_axis: int = -1):
    """Every token's ``(scale, zero point)`` (see :func:`token_fake_quant`; of every group
    when ``x`` comes from :func:`group_tokens`), keeping ``feature_axis`` as a size-1 dim."""
    lo = x.amin(dim=feature_axis, keepdim=True) * clip
    hi = x.amax(dim=feature_axis, keepdim=True) * clip
    return range_to_params(lo, hi, bits)


@QUANTIZERS.register_module()
class TokenQuantizer(BaseQuantizer):
    """Dynamic per-token asymmetric uniform fake quantizer with a calibrated clip ratio.

    Args:
        bits (int): Bit width, 2..8.
        feature_axis (int): The axis a token's range is taken over: ``-1`` for Linear inputs
            ``(..., tokens, features)`` and ``q`` ``(B, heads, N, d)``, ``-2`` for ``k^T``
            ``(B, heads, d, N)``.
        group_size (int, optional): Features per scale within a token (block scaling along
            the reduction axis); ``None``: one scale per token.
        zero_point (str): ``'integer'`` (the grid contains 0, an integer zero point) or
            ``'float'`` (the grid from the clipped minimum to the clipped maximum; module
            docstring).
    """

    lazy_buffers = ('clip', )

    def __init__(self, bits: int, feature_axis: int = -1, group_size: Optional[int] = None,
                 zero_point: str = 'integer') -> None:
        super().__init__(bits, UNIFORM_BITS)
        if feature_axis not in (-1, -2):
            raise ValueError(f'feature_axis={feature_axis!r} must be -1 (rows) or -2 '
                             '(columns).')
        check_group_size(group_size)
        check_zero_point(zero_point)
        self.feature_axis = feature_axis
        self.group_size = group_size
        self.float_zero_point = zero_point == 'float'

    def set_params(self, clip: float) -> None:
        """Set the clip ratio (in (0, 1]: the fraction of each token's range kept)."""
        clip_t = check_finite(torch.as_tensor(clip, dtype=torch.float32), 'clip')
        if clip_t.numel() != 1 or not 0 < float(clip_t) <= 1:
            raise ValueError(f'clip={clip!r} must be a single ratio in (0, 1].')
        self._set(clip=clip_t.reshape(()).to(self.calibrated.device))

    def fake_quant(self, x: Tensor, clip: Tensor) -> Tensor:
        """``x`` quantized with clip ratio(s) ``clip`` (see :func:`token_fake_quant`)."""
        return token_fake_quant(x, clip, self.bits, self.feature_axis, self.group_size,
                                self.float_zero_point)

    def integer_scale(self, x: Tensor) -> Optional[Tensor]:
        """The scales ``x`` is quantized with (one per token): ``self(x)`` is integer codes
        times them; ``None`` with groups (no single scale per token to factor out of a
        product) or a float zero point (``self(x)`` is offset codes)."""
        if self.group_size is not None or self.float_zero_point:
            return None
        return token_params(x, self.clip, self.bits, self.feature_axis)[0]

    def forward(self, x: Tensor) -> Tensor:
        if not self.is_active:
            return x
        return self.fake_quant(x, self.clip)

    def extra_repr(self) -> str:
        group = '' if self.group_size is None else f', group_size={self.group_size}'
        zero = ", zero_point='float'" if self.float_zero_point else ''
        return f'{super().extra_repr()}, feature_axis={self.feature_axis}{group}{zero}'


ZERO_POINTS = ('integer', 'float')


def check_zero_point(zero_point: str, name: str = 'zero_point') -> None:
    """One of :data:`ZERO_POINTS`."""
    if zero_point not in ZERO_POINTS:
        raise ValueError(f'{name}={zero_point!r} must be one of {ZERO_POINTS}: an integer '
                         'zero point (the grid contains 0) or a float one (the grid spans '
                         'each token\'s clipped range).')


def check_group_size(group_size: Optional[int], name: str = 'group_size') -> None:
    """``None`` or an integer >= 2."""
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(
            group_size, int) or group_size < 2):
        raise ValueError(f'{name}={group_size!r} must be None (one scale per token) or an '
                         'integer >= 2 (features per scale, e.g. 32).')
