"""Logarithmic quantization with base ``2^(q/r)`` as pure tensor functions.

AdaLog uses ``r = 37`` and an integer ``q`` in ``[10, 137]`` (``q = 37`` is base 2) up to 4
bits, as published; from 5 bits on mmq searches finer bases too (:func:`adalog_bases`). The
fixed baselines are log2 (``q = r = 1``) and log-sqrt2 (``q = 1, r = 2``). For ``b`` bits and
scale ``s``::

    x_t = clamp(x / s, 1e-15, 1)
    k   = round(-log2(x_t) * r / q)      # integer code
    m   = k < 2^b                        # codes past the range dequantize to exactly 0
    k   = clamp(k, 0, 2^b - 1)

Two dequantization paths: the exact one ``s * 2^(-k q / r) * m`` (differentiable with
straight-through rounding) and the integer-table one a deployed kernel computes,
``s * 2^(-T1[k]) * T2[k] * m`` with ``T1[i] = floor(i q / r)`` (a right shift) and a mantissa
table ``T2`` quantized to steps of ``1 / (2^(b+1) - 2)``. The two differ by at most half a
mantissa step times ``s * 2^(-T1[k])``.
"""
from typing import Tuple, Union

import torch
from torch import Tensor

from .fused_scores import fused_forward
from .fused_scores import log_fake_quant as log_fake_quant_fused
from .uniform import round_ste
from .validation import LOG_BITS, check_bits, check_finite, check_positive

ADALOG_R = 37
ADALOG_Q_MIN = 10
ADALOG_Q_MAX = 137
# Beyond the published range: the base denominator from 5 bits on (finer bases 2^(1/r)).
ADALOG_FINE_R = {5: 37, 6: 74, 7: 148, 8: 148}
ADALOG_BASE_RANGES = ('extended', 'published')
# About |min GELU(x)|: the shift that makes post-GELU activations non-negative.
GELU_SHIFT = 0.16997124
_TINY = 1e-15

QLike = Union[int, Tensor]


def adalog_bases(bits: int, base_range: str = 'extended') -> Tuple[int, Tuple[int, ...]]:
    """``(r, q values)`` AdaLog searches at ``bits``.

    Up to 4 bits the published ``r = 37``, ``q`` in ``[10, 137]`` (smallest base
    ``2^(10/37)``, 1.21). With more bits a base that coarse wastes the extra codes on range
    the activations do not have (at 6 bits its 63 codes span ``2^17``) and caps the resolution
    near the top of the range below uniform's, so from 5 bits on the search also offers finer
    bases: ``q`` from 1 with ``r`` = 37 (5 bits), 74 (6), 148 (7, 8): the smallest base step,
    ``ln 2 / r`` relative, stays about the mantissa table's resolution ``1 / (2^(b+1) - 2)``.
    The largest base stays ``2^(137/37)`` and every published base is still offered (``q`` a
    multiple of ``r / 37``). Any integer ``q`` keeps the integer-table dequantization (a shift
    ``floor(k q / r)`` and an ``r``-entry mantissa table), which the fake-quant computes exactly.
    ``base_range='published'`` keeps the published range at every width.
    """
    check_bits(bits, LOG_BITS)
    if base_range not in ADALOG_BASE_RANGES:
        raise ValueError(f'base_range={base_range!r} is not one of {ADALOG_BASE_RANGES}.')
    if bits <= 4 or base_range == 'published':
        return ADALOG_R, tuple(range(ADALOG_Q_MIN, ADALOG_Q_MAX + 1))
    r = ADALOG_FINE_R[bits]
    return r, tuple(range(1, ADALOG_Q_MAX * r // ADALOG_R + 1))


def mantissa_levels(bits: int) -> int:
    """``2^(b+1) - 2``: the mantissa table's resolution."""
    return 2**(bits + 1) - 2


def check_base(q: QLike, r: int) -> None:
    """Raise unless ``q`` (int or tensor of ints) and ``r`` are positive integers."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f'r={r!r} must be a positive integer.')
    qt = torch.as_tensor(q)
    if qt.numel() == 0 or bool((qt <= 0).any()) or bool((qt != qt.round()).any()):
        raise ValueError(f'q={q!r} must hold positive integers (base 2^(q/r)).')


def _codes(x: Tensor, scale: Tensor, bits: int, q: QLike, r: int,
           ste: bool) -> Tuple[Tensor, Tensor]:
    x_t = torch.clamp(x / scale, _TINY, 1.0)
    k = -torch.log2(x_t) * (r / torch.as_tensor(q, dtype=x.dtype))
    mask = torch.round(k.detach()) < 2**bits
    # Clamp, then round (identical codes for integer bounds) so in-range codes keep a gradient.
    k = torch.clamp(k, 0, 2**bits - 1)
    return (round_ste(k) if ste else torch.round(k)), mask


def log_quantize(x: Tensor, scale: Tensor, bits: int, q: QLike, r: int) -> Tuple[Tensor, Tensor]:
    """Integer codes (float tensor) and the in-range mask of ``x``."""
    check_bits(bits, LOG_BITS)
    check_finite(x)
    check_positive(torch.as_tensor(scale, dtype=x.dtype), 'scale')
    check_base(q, r)
    return _codes(x, torch.as_tensor(scale, dtype=x.dtype), bits, q, r, ste=False)


def log_tables(bits: int, q: int, r: int) -> Tuple[Tensor, Tensor]:
    """The deployed kernel's tables: shift ``T1`` (int64) and quantized mantissa ``T2``."""
    check_bits(bits, LOG_BITS)
    check_base(q, r)
    i = torch.arange(2**bits, dtype=torch.int64)
    t1 = torch.div(i * q, r, rounding_mode='floor')
    levels = mantissa_levels(bits)
    t2 = torch.round(2.0**(-((i * q) % r).double() / r) * levels) / levels
    return t1, t2.float()


def _dequantize_exact(codes: Tensor, mask: Tensor, scale: Tensor, q: QLike, r: int) -> Tensor:
    return scale * torch.exp2(-codes * (torch.as_tensor(q, dtype=codes.dtype) / r)) * mask


def _dequantize_table(codes: Tensor, mask: Tensor, scale: Tensor, bits: int, q: QLike,
                      r: int) -> Tensor:
    # Elementwise form of T1[k] and T2[k]: identical integers to a table lookup, but it also
    # works when q differs per candidate (the search scores many bases at once).
    prod = codes.detach() * torch.as_tensor(q, dtype=codes.dtype)
    shift = torch.div(prod, r, rounding_mode='floor')
    rem = prod - shift * r
    levels = mantissa_levels(bits)
    mant = torch.round(torch.exp2(-rem / r) * levels) / levels
    return scale * torch.exp2(-shift) * mant * mask


def log_dequantize(codes: Tensor, mask: Tensor, scale: Tensor, bits: int, q: QLike, r: int,
                   table: bool = True) -> Tensor:
    """Real values of codes: the integer-table path (``table=True``) or the exact one."""
    check_bits(bits, LOG_BITS)
    check_base(q, r)
    scale = torch.as_tensor(scale, dtype=codes.dtype)
    if table:
        return _dequantize_table(codes, mask, scale, bits, q, r)
    return _dequantize_exact(codes, mask, scale, q, r)


def log_levels(bits: int, q: QLike, r: int, table: bool, dtype=torch.float32) -> Tensor:
    """Dequantized value of every code for each base: ``(bases, 2^b + 1)``; the extra last
    entry (code ``2^b``, past the range) is 0."""
    qv = torch.as_tensor(q, dtype=torch.float64).reshape(-1, 1)
    k = torch.arange(2**bits + 1, dtype=torch.float64, device=qv.device)
    if table:
        prod = k * qv
        shift = torch.div(prod, r, rounding_mode='floor')
        levels = mantissa_levels(bits)
        mant = torch.round(torch.exp2(-(prod - shift * r) / r) * levels) / levels
        values = torch.exp2(-shift) * mant
    else:
        values = torch.exp2(-k * qv / r)
    values[:, -1] = 0
    return values.to(dtype)


def fake_quant_log(x: Tensor, scale: Tensor, bits: int, q: QLike, r: int,
                   table: bool = False, shift: float = 0.0, offset: float = 0.0) -> Tensor:
    """Quantize-dequantize ``x + shift``, minus ``offset``; unchecked (hot path).
    ``table=False`` is differentiable (STE).

    Without autograd, codes index a per-base table of values (what both paths compute, in
    a few ops); ``q`` may hold one base per leading candidate index. A shifted quantizer's
    ``Q(x + c) - c`` is ``shift = offset = c``: on a large tensor both happen inside the one
    fused pass (no extra passes over ``x`` for the shift, none at all when it is 0).
    """
    if torch.is_grad_enabled() and (x.requires_grad or torch.as_tensor(scale).requires_grad):
        codes, mask = _codes(x + shift if shift else x, scale, bits, q, r, ste=not table)
        if table:
            out = _dequantize_table(codes, mask, scale, bits, q, r)
        else:
            out = _dequantize_exact(codes, mask, scale, q, r)
        return out - offset if offset else out
    values = log_levels(bits, q, r, table, x.dtype).to(x.device)
    if values.shape[0] == 1 and fused_forward(x, scale):  # a large tensor: one fused pass
        s = torch.as_tensor(scale, dtype=x.dtype, device=x.device).reshape(1, 1)
        coef = -(r / torch.as_tensor(q, dtype=x.dtype, device=x.device)).reshape(1, 1)
        return log_fake_quant_fused(x.reshape(1, -1), s, coef, values, 2**bits, _TINY,
                                    offset, shift).reshape(x.shape)
    x_t = torch.clamp((x + shift if shift else x) / scale, _TINY, 1.0)
    k = torch.log2(x_t).mul_(-(r / torch.as_tensor(q, dtype=x.dtype)))
    idx = k.round_().clamp_(max=2**bits).long()  # 2^b and beyond: past the range -> 0
    if values.shape[0] == 1:
        out = values[0][idx]
    else:
        out = values.gather(1, idx.reshape(values.shape[0], -1)).reshape(idx.shape)
    out = out.mul_(scale)
    return out.sub_(offset) if offset else out


def log_fake_quant(x: Tensor, scale: Tensor, bits: int, q: QLike, r: int,
                   table: bool = False) -> Tensor:
    """Checked :func:`fake_quant_log`."""
    check_bits(bits, LOG_BITS)
    check_finite(x)
    scale = torch.as_tensor(scale, dtype=x.dtype)
    check_positive(scale, 'scale')
    check_base(q, r)
    return fake_quant_log(x, scale, bits, q, r, table)


def fold_shift_into_bias(weight: Tensor, bias: Union[Tensor, None], shift: float) -> Tensor:
    """Bias reparameterization for a shifted input quantizer ``Q(x + c) - c``.

    ``W (Q(x + c) - c) + b == W Q(x + c) + (b - c W 1)``: returns ``b' = b - c W 1`` so the
    next layer consumes ``Q(x + c)`` directly. ``weight`` is the (already quantized) weight
    of shape ``(out, in)``.
    """
    if weight.dim() != 2:
        raise ValueError(f'weight must be (out, in), got shape {tuple(weight.shape)}.')
    if bias is not None and bias.shape != (weight.shape[0], ):
        raise ValueError(f'bias of shape {tuple(bias.shape)} does not match weight '
                         f'{tuple(weight.shape)}.')
    folded = -shift * weight.sum(dim=1)
    return folded if bias is None else bias + folded
