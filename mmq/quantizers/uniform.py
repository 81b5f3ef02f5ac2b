"""Asymmetric uniform quantization as pure tensor functions.

``q = clamp(round(x / s) + z, 0, 2^b - 1)``, ``x_hat = (q - z) * s``.

Granularity is given by ``ch_axis``: ``None`` means one ``(s, z)`` for the whole tensor, an
integer means one pair per index of that axis (per output channel of a weight: ``0``; per
attention head of a ``(B, heads, N, d)`` tensor: ``1``). Parameters are kept in the
"broadcast" shape: the size of ``ch_axis`` there and 1 elsewhere.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .validation import check_bits, check_broadcast, check_finite, check_positive


def round_ste(x: Tensor) -> Tensor:
    """Round with a straight-through (identity) gradient; the value is exactly ``round(x)``
    (so a code on the clamp boundary still passes its gradient)."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.round(x)  # no autograd: skip the STE arithmetic (search hot path)
    return torch.round(x).detach() + (x - x.detach())


def param_shape(x: Tensor, ch_axis: Optional[int]) -> Tuple[int, ...]:
    """Shape of per-``ch_axis`` parameters that broadcast against ``x``."""
    shape = [1] * x.dim()
    if ch_axis is not None:
        shape[ch_axis] = x.shape[ch_axis]
    return tuple(shape)


def group_rows(x: Tensor, ch_axis: Optional[int]) -> Tensor:
    """View ``x`` as ``(groups, elements)``: one row per independent parameter set."""
    if ch_axis is None:
        return x.reshape(1, -1)
    return x.movedim(ch_axis, 0).reshape(x.shape[ch_axis], -1)


def ungroup(values: Tensor, x: Tensor, ch_axis: Optional[int]) -> Tensor:
    """Inverse of the reduction of :func:`group_rows`: ``(groups,)`` -> broadcast shape."""
    return values.reshape(param_shape(x, ch_axis))


def quantile_rows(rows: Tensor, q: Tensor) -> Tensor:
    """Quantiles ``q`` (in [0, 1], shape ``(Q,)``) of each row: returns ``(groups, Q)``.

    Uses ``kthvalue``/sort on each row (``torch.quantile`` refuses more than 16M elements).
    """
    n = rows.shape[1]
    sorted_rows = rows.sort(dim=1).values
    pos = q.to(rows) * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = pos.ceil().long().clamp(0, n - 1)
    frac = (pos - lo.to(pos))
    return sorted_rows[:, lo] * (1 - frac) + sorted_rows[:, hi] * frac


def range_to_params(lo: Tensor, hi: Tensor, bits: int) -> Tuple[Tensor, Tensor]:
    """Scale and integer zero point that map ``[lo, hi]`` (widened to contain 0) to the grid."""
    check_bits(bits)
    return grid_params(lo, hi, 2**bits - 1)


def grid_params(lo: Tensor, hi: Tensor, qmax: Union[int, Tensor]) -> Tuple[Tensor, Tensor]:
    """:func:`range_to_params` for the grid ``0..qmax``, unchecked. Compiled kernels pass
    ``qmax`` as a 0-dim tensor: a Python float there is baked into the graph."""
    lo = torch.minimum(lo, torch.zeros_like(lo))
    hi = torch.maximum(hi, torch.zeros_like(hi))
    scale = ((hi - lo) / qmax).clamp_min(1e-8)
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero_point


def minmax_params(x: Tensor, bits: int, ch_axis: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """MinMax calibration: the full range of ``x`` (per ``ch_axis`` group)."""
    check_finite(x)
    rows = group_rows(x.detach(), ch_axis)
    lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    scale, zp = range_to_params(lo, hi, bits)
    return ungroup(scale, x, ch_axis), ungroup(zp, x, ch_axis)


def percentile_params(x: Tensor,
                      bits: int,
                      ch_axis: Optional[int] = None,
                      lower: float = 0.0001,
                      upper: float = 0.9999) -> Tuple[Tensor, Tensor]:
    """Percentile calibration: the range between the ``lower`` and ``upper`` quantiles."""
    check_finite(x)
    if not 0.0 <= lower < upper <= 1.0:
        raise ValueError(f'percentiles must satisfy 0 <= lower < upper <= 1, got '
                         f'lower={lower}, upper={upper}.')
    rows = group_rows(x.detach(), ch_axis)
    qs = quantile_rows(rows, torch.tensor([lower, upper], device=rows.device))
    scale, zp = range_to_params(qs[:, 0], qs[:, 1], bits)
    return ungroup(scale, x, ch_axis), ungroup(zp, x, ch_axis)


def _check_params(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> None:
    check_bits(bits)
    check_finite(x)
    check_positive(scale, 'scale')
    check_finite(zero_point, 'zero_point')
    check_broadcast(scale, x, 'scale')
    check_broadcast(zero_point, x, 'zero_point')


def uniform_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """Integer codes in ``[0, 2^bits - 1]`` (as a float tensor)."""
    _check_params(x, scale, zero_point, bits)
    return torch.clamp(torch.round(x / scale) + zero_point, 0, 2**bits - 1)


def uniform_dequantize(codes: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Real values of integer codes."""
    return (codes - zero_point) * scale


def fake_quant_uniform(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """Quantize-dequantize with straight-through rounding; unchecked (hot path).

    The gradient w.r.t. ``x`` is the identity inside the clipping range and zero outside; the
    gradient w.r.t. ``scale`` is the LSQ one, so scales can be learned.
    """
    # round(clamp(v, -z, qmax - z)) == clamp(round(v), -z, qmax - z) for integer z; clamping
    # first keeps the gradient on codes that round onto the range's ends.
    qmax = 2**bits - 1
    if not (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)):
        # No autograd (the search hot path): one allocation, the rest in place.
        return (x / scale).round_().clamp_(-zero_point, qmax - zero_point).mul_(scale)
    return round_ste(torch.clamp(x / scale, -zero_point, qmax - zero_point)) * scale


def fake_quant_span(x: Tensor, clip: Tensor, qmax: Union[int, Tensor], axis: int) -> Tensor:
    """Quantize-dequantize every slice along ``axis`` on the grid ``lo + s * {0..qmax}``, from
    its minimum to its maximum scaled by ``clip`` (``lo = clip * min``, ``s = clip * (max -
    min) / qmax``; a real-valued offset in place of an integer zero point, the range not
    widened to contain 0), straight-through rounding; unchecked. ``qmax`` is a number, or a
    0-dim tensor inside compiled kernels."""
    lo = x.amin(dim=axis, keepdim=True) * clip
    scale = ((x.amax(dim=axis, keepdim=True) * clip - lo) / qmax).clamp_min(1e-8)
    return round_ste(torch.clamp((x - lo) / scale, qmax * 0, qmax)) * scale + lo


def uniform_fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int) -> Tensor:
    """Checked :func:`fake_quant_uniform`."""
    _check_params(x, scale, zero_point, bits)
    return fake_quant_uniform(x, scale, zero_point, bits)
