"""FPCS: Fast Progressive Combining Search for uniform and logarithmic quantizers.

Both searches build candidates and a scoring callback and hand them to
:func:`mmq.quantizers.beam_search.beam_search`.

Uniform (per group: tensor, channel or head), published schedule: 128 initial candidates
(ranges from percentiles -- upper bound P90..P100, lower bound P10..P0 -- crossed with integer
zero points), keep 16; then 5 steps in which each survivor spawns 8 scales
``s + (linspace(0, 1, 8) - 0.5) * d`` keeping its zero point, ``d <- d / 7.5``, keep 16; best 1.
The zero points are centred on each range's own zero point ``round(-lo / s)`` (which is
``2^(b-1)`` for a symmetric range).

Log (AdaLog / fixed bases): score every base ``q`` at the current scale, keep 8; cross with 16
scales, keep 32; 5 steps of 4 scale children each (``d <- d / 3.5``), keep 32; best 1. With a
fixed scale (post-Softmax) only ``q`` is searched.

Per-token clip ratio (dynamic per-token quantizers, beyond the published methods): 15 ratios
in [0.3, 1], keep 4; 3 steps of 8 children each (width / 4 per step), keep 4; best 1.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .beam_search import (BeamStep, SearchResult, beam_search, chunk_for, grid_search,
                          repeat_each, spread, stack_params)
from .log_quant import _TINY as LOG_TINY
from .log_quant import log_levels
from .fused_scores import (canonical_groups, log_fake_quant, log_self_mse, uniform_codes,
                           uniform_fake_quant, uniform_self_mse)
from .objectives import INT_CODE_MAX, IntegerProductMSE, Objective, SelfMSE, self_mse
from .token_quantizer import token_fake_quant
from .uniform import group_rows, quantile_rows
from .validation import LOG_BITS, UNIFORM_BITS, check_bits, check_finite


@dataclass
class UniformSchedule:
    """The uniform FPCS schedule (published defaults)."""
    num_candidates: int = 128
    width: int = 16
    steps: int = 6
    children: int = 8
    shrink: float = 7.5
    # First refinement width, in units of the initial grid's scale spacing (methods.md leaves
    # it open; 4 spacings beat a 1024-point dense grid on per-channel weight output MSE, see
    # tests/test_fpcs.py).
    init_width: float = 4.0


@dataclass
class LogSchedule:
    """The logarithmic FPCS schedule (published defaults)."""
    keep_bases: int = 8
    num_scales: int = 16
    width: int = 32
    steps: int = 5
    children: int = 4
    shrink: float = 3.5
    scale_range: Tuple[float, float] = (0.25, 1.25)  # x the initial scale
    # Beyond the ratio grid: ``num_scales`` more initial scales at these quantiles of the
    # (shifted) activations, e.g. ``(0.9, 1.0)`` for P90..P100 as the reference code searches
    # the post-GELU scale. Heavy-tailed activations put their best scale far below
    # ``0.25 x max``, which the ratio grid cannot reach. ``None``: the ratio grid only.
    scale_quantiles: Optional[Tuple[float, float]] = None


def uniform_init_grid(x: Tensor, bits: int, ch_axis: Optional[int], num_ranges: int,
                      num_zero_points: int,
                      fixed_zero_point: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Initial ``(groups, num_ranges * num_zero_points, 2)`` grid of (scale, zero point) and the
    scale spacing ``(groups,)`` that seeds the refinement width."""
    qmax = 2**bits - 1
    rows = group_rows(x.detach(), ch_axis)
    t = torch.linspace(0, 1, num_ranges, dtype=torch.float64, device=x.device)
    qs = quantile_rows(rows.double(), torch.cat([0.1 - 0.1 * t, 0.9 + 0.1 * t]))
    lo = qs[:, :num_ranges].clamp_max(0)
    hi = qs[:, num_ranges:].clamp_min(0)
    if fixed_zero_point is not None:
        lo = torch.zeros_like(lo)
    scale = ((hi - lo) / qmax).clamp_min(1e-8)
    if fixed_zero_point is not None:
        zps = torch.full_like(scale, float(fixed_zero_point)).unsqueeze(-1)
    else:
        offsets = (torch.arange(num_zero_points, dtype=scale.dtype, device=scale.device)
                   - num_zero_points // 2)
        zps = (torch.round(-lo / scale).unsqueeze(-1) + offsets).clamp(0, qmax)
    scales = scale.unsqueeze(-1).expand_as(zps)
    grid = stack_params(scales.flatten(1), zps.flatten(1)).to(x.dtype)
    spacing = (scale.amax(1) - scale.amin(1)) / max(1, num_ranges - 1)
    spacing = torch.where(spacing > 0, spacing, scale[:, -1] * 0.1)
    return grid, spacing.to(x.dtype)


def _uniform_score(x: Tensor, bits: int, ch_axis: Optional[int], objective: Objective):
    fused = (isinstance(objective, SelfMSE) and objective.x is x
             and objective.ch_axis == ch_axis)
    # Candidates for one operand of a product whose other operand is integer codes times a
    # scale: exact int8 products.
    integer = (isinstance(objective, IntegerProductMSE) and objective.accepts(x, ch_axis)
               and 2**bits - 1 <= INT_CODE_MAX)
    xc = canonical_groups(x, ch_axis)  # (1, pre, G, post), a view
    qmax = float(2**bits - 1)

    def score(cands: Tensor) -> Tensor:
        k, groups = cands.shape[1], cands.shape[0]
        scale = cands[..., 0].t().reshape(k, 1, groups, 1)
        zp = cands[..., 1].t().reshape(k, 1, groups, 1)
        if fused:  # one pass per candidate, no (K, *x.shape) intermediates
            return uniform_self_mse(xc, scale, zp, qmax).t()
        if integer:
            codes = uniform_codes(xc, scale, zp, qmax).reshape(k, *x.shape)
            return objective.score_codes(codes, cands[..., 0].t()).t()
        xq = uniform_fake_quant(xc, scale, zp, qmax).reshape(k, *x.shape)
        return objective(xq).t()

    return score


def _zero_points_for(bits: int, role: str) -> int:
    if role == 'weight':
        return min(16, 2**(bits - 1))
    if role == 'activation':
        return min(16, 2**bits)
    raise ValueError(f"role={role!r} must be 'weight' or 'activation'.")


@torch.no_grad()
def fpcs_uniform(x: Tensor,
                 bits: int,
                 ch_axis: Optional[int] = None,
                 objective: Optional[Objective] = None,
                 role: str = 'activation',
                 fixed_zero_point: Optional[int] = None,
                 schedule: UniformSchedule = UniformSchedule(),
                 budget: int = 2**24) -> SearchResult:
    """Search (scale, zero point) per ``ch_axis`` group; ``objective`` defaults to self-MSE.

    Returns a :class:`SearchResult` whose ``params`` are ``(groups, 2)``.
    """
    check_bits(bits, UNIFORM_BITS)
    check_finite(x)
    objective = objective or self_mse(x, ch_axis)
    if fixed_zero_point is not None:
        num_zp = 1
    else:
        num_zp = _zero_points_for(bits, role)
    grid, d0 = uniform_init_grid(x, bits, ch_axis, max(1, schedule.num_candidates // num_zp),
                                 num_zp, fixed_zero_point)

    def expand(beam: Tensor, step: int) -> Tensor:
        d = d0 * schedule.init_width / schedule.shrink**(step - 1)
        scales = spread(beam[..., 0], d.unsqueeze(1).expand_as(beam[..., 0]), schedule.children)
        scales = scales.flatten(1).clamp_min(1e-8)
        return stack_params(scales, repeat_each(beam[..., 1], schedule.children))

    steps = [BeamStep(schedule.width)] + [
        BeamStep(schedule.width, expand) for _ in range(schedule.steps - 1)
    ]
    elements = (objective.elements_per_candidate if isinstance(objective, IntegerProductMSE)
                else x.numel())
    return beam_search(grid, _uniform_score(x, bits, ch_axis, objective), steps,
                       chunk_for(elements, budget))


@torch.no_grad()
def uniform_dense_grid(x: Tensor, bits: int, ch_axis: Optional[int], objective: Optional[Objective],
                       num_ranges: int, num_zero_points: int,
                       budget: int = 2**24) -> SearchResult:
    """Exhaustive search over the same kind of grid FPCS starts from (a baseline)."""
    objective = objective or self_mse(x, ch_axis)
    grid, _ = uniform_init_grid(x, bits, ch_axis, num_ranges, num_zero_points)
    return grid_search(grid, _uniform_score(x, bits, ch_axis, objective),
                       chunk_for(x.numel(), budget))


def _quantile_scales(shifted: Tensor, quantiles: Tuple[float, float], num: int) -> Tensor:
    """``num`` scales at evenly spaced quantiles of the positive part of ``shifted``."""
    values = shifted.flatten()
    values = values[values > 0]
    if values.numel() == 0:
        values = shifted.abs().flatten().clamp_min(1e-8)
    t = torch.linspace(quantiles[0], quantiles[1], num, dtype=torch.float64,
                       device=shifted.device)
    return quantile_rows(values.double().unsqueeze(0), t)[0].to(shifted.dtype).clamp_min(1e-8)


def _log_score(x: Tensor, bits: int, r: int, shift: float, table: bool, objective: Objective):
    shifted = x.reshape(1, -1) + shift
    # Self-MSE: (Q(x + c) - c) - x = Q(x + c) - (x + c), one fused pass per candidate.
    fused = isinstance(objective, SelfMSE) and objective.x is x and objective.ch_axis is None

    def score(cands: Tensor) -> Tensor:
        q = cands[0, :, 0].unsqueeze(1)  # (K, 1): one per-tensor search
        scale = cands[0, :, 1].unsqueeze(1)
        # One fused pass per candidate: codes, table lookup, scale (fake_quant_log's no-grad
        # path, compiled when possible).
        values = log_levels(bits, q.flatten(), r, table, x.dtype).to(x.device)
        if fused:
            return log_self_mse(shifted, scale, -(r / q), values, 2**bits, LOG_TINY).t()
        xq = log_fake_quant(shifted, scale, -(r / q), values, 2**bits, LOG_TINY, shift)
        return objective(xq.reshape(q.shape[0], *x.shape)).t()

    return score


@torch.no_grad()
def fpcs_log(x: Tensor,
             bits: int,
             bases: Tensor,
             r: int,
             objective: Optional[Objective] = None,
             shift: float = 0.0,
             fixed_scale: Optional[float] = None,
             table: bool = True,
             schedule: LogSchedule = LogSchedule(),
             budget: int = 2**24) -> SearchResult:
    """Search base numerators ``q`` (from ``bases``) and, unless ``fixed_scale``, the scale of
    a per-tensor log quantizer ``Q(x + shift) - shift``. ``params`` are ``(1, 2)``: (q, s)."""
    check_bits(bits, LOG_BITS)
    check_finite(x)
    objective = objective or self_mse(x)
    bases = torch.as_tensor(bases, dtype=x.dtype).to(x.device).flatten()
    if fixed_scale is not None:
        s0 = torch.tensor(float(fixed_scale), dtype=x.dtype, device=x.device)
    else:
        s0 = (x.detach() + shift).max().clamp_min(1e-8)
    first = stack_params(bases.unsqueeze(0), s0.expand(1, bases.numel()))
    steps = [BeamStep(schedule.keep_bases if fixed_scale is None else 1)]
    if fixed_scale is None:
        lo, hi = schedule.scale_range
        scales = s0 * torch.linspace(lo, hi, schedule.num_scales, dtype=x.dtype, device=x.device)
        d0 = scales[1] - scales[0]
        if schedule.scale_quantiles is not None:
            scales = torch.cat([scales, _quantile_scales(x.detach() + shift,
                                                         schedule.scale_quantiles,
                                                         schedule.num_scales)])

        def cross(beam: Tensor, step: int) -> Tensor:
            q = repeat_each(beam[..., 0], scales.numel())
            s = scales.repeat(beam.shape[1]).unsqueeze(0)
            return stack_params(q, s)

        def refine(beam: Tensor, step: int) -> Tensor:
            if schedule.scale_quantiles is None:
                width = torch.full_like(beam[..., 1], float(d0))
            else:  # the ratio grid's spacing relative to each survivor's own scale
                width = beam[..., 1] * float(d0 / s0)
            s = spread(beam[..., 1], width / schedule.shrink**(step - 2), schedule.children)
            return stack_params(repeat_each(beam[..., 0], schedule.children),
                                s.flatten(1).clamp_min(1e-8))

        steps.append(BeamStep(schedule.width, cross))
        steps += [BeamStep(schedule.width, refine) for _ in range(schedule.steps)]
    return beam_search(first, _log_score(x, bits, r, shift, table, objective), steps,
                       chunk_for(x.numel(), budget))


# The clip-ratio search of a dynamic per-token quantizer: 15 ratios in [0.3, 1], keep 4, then
# 3 steps of 8 children each around the survivors (width / 4 per step), best 1.
TOKEN_CLIPS = (0.3, 1.0, 15)
TOKEN_STEPS = 3


@torch.no_grad()
def fpcs_token(x: Tensor,
               bits: int,
               feature_axis: int = -1,
               objective: Optional[Objective] = None,
               budget: int = 2**24,
               group_size: Optional[int] = None,
               float_zero_point: bool = False) -> SearchResult:
    """Search the clip ratio of a dynamic per-token quantizer
    (:class:`mmq.quantizers.TokenQuantizer`) with FPCS's coarse-to-fine beam; ``objective``
    defaults to self-MSE (``group_size``, ``float_zero_point``: the quantizer's features per
    scale and grid). ``params`` are ``(1, 1)``: the ratio, in (0, 1]."""
    check_bits(bits, UNIFORM_BITS)
    check_finite(x)
    objective = objective or self_mse(x)
    lo, hi, num = TOKEN_CLIPS
    grid = torch.linspace(lo, hi, num, dtype=x.dtype, device=x.device).view(1, num, 1)
    d0 = (hi - lo) / (num - 1)

    def score(cands: Tensor) -> Tensor:
        clip = cands[0, :, 0].reshape(-1, *([1] * x.dim()))
        quantized = token_fake_quant(x.unsqueeze(0), clip, bits, feature_axis, group_size,
                                     float_zero_point)
        return objective(quantized).t()

    def refine(beam: Tensor, step: int) -> Tensor:
        width = torch.full_like(beam[..., 0], 2 * d0 / 4**(step - 1))
        return spread(beam[..., 0], width, 8).flatten(1).clamp(1e-3, 1.0).unsqueeze(-1)

    steps = [BeamStep(4)] + [BeamStep(4, refine) for _ in range(TOKEN_STEPS)]
    return beam_search(grid, score, steps, chunk_for(x.numel(), budget))
