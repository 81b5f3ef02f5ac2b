"""Calibrators: algorithms that choose a quantizer's parameters from data.

Each is called as ``calibrator(quantizer, x, objective=None)`` and returns the search's loss
(or ``None``). ``objective`` (see :mod:`mmq.quantizers.objectives`) lets FPCS score
candidates by the layer output; MinMax and percentile ignore it.
"""
from typing import Optional

import torch
from torch import Tensor

from mmq.registry import CALIBRATORS
from .fpcs import LogSchedule, UniformSchedule, fpcs_log, fpcs_token, fpcs_uniform
from .log_quantizer import LogQuantizer
from .objectives import Objective
from .token_quantizer import TokenQuantizer
from .uniform import minmax_params, percentile_params, quantile_rows
from .uniform_quantizer import UniformQuantizer
from .validation import check_finite


def _unsupported(calibrator, quantizer):
    return TypeError(f'{type(calibrator).__name__} cannot calibrate '
                     f'{type(quantizer).__name__}: expected UniformQuantizer, LogQuantizer '
                     'or TokenQuantizer.')


@CALIBRATORS.register_module()
class MinMaxCalibrator:
    """The full observed range (uniform), the maximum as the log scale, or every token's full
    range (dynamic per-token)."""

    def __call__(self, quantizer, x: Tensor, objective: Optional[Objective] = None) -> None:
        check_finite(x)
        if isinstance(quantizer, UniformQuantizer):
            if quantizer.fixed_zero_point is not None:
                x = x.clamp_min(0)  # a zero point fixed at 0 covers [0, max]
            quantizer.set_params(*minmax_params(x, quantizer.bits, quantizer.ch_axis))
        elif isinstance(quantizer, LogQuantizer):
            scale = quantizer.fixed_scale or float((x + quantizer.shift).max().clamp_min(1e-8))
            quantizer.set_params(int(quantizer.q), scale)
        elif isinstance(quantizer, TokenQuantizer):
            quantizer.set_params(1.0)  # every token's full range
        else:
            raise _unsupported(self, quantizer)


@CALIBRATORS.register_module()
class PercentileCalibrator:
    """Clip to the ``lower`` / ``upper`` quantiles (uniform), or the ``upper`` quantile as the
    log scale; a dynamic per-token quantizer keeps each token's full range (its range is
    per token already).

    Args:
        lower (float): Lower quantile in [0, 1].
        upper (float): Upper quantile in [0, 1].
    """

    def __init__(self, lower: float = 0.0001, upper: float = 0.9999) -> None:
        if not 0.0 <= lower < upper <= 1.0:
            raise ValueError(f'need 0 <= lower < upper <= 1, got lower={lower}, upper={upper}.')
        self.lower, self.upper = lower, upper

    def __call__(self, quantizer, x: Tensor, objective: Optional[Objective] = None) -> None:
        check_finite(x)
        if isinstance(quantizer, UniformQuantizer):
            lower = 0.0 if quantizer.fixed_zero_point is not None else self.lower
            scale, zp = percentile_params(x, quantizer.bits, quantizer.ch_axis, lower,
                                          self.upper)
            quantizer.set_params(scale, zp)
        elif isinstance(quantizer, LogQuantizer):
            if quantizer.fixed_scale is not None:
                scale = quantizer.fixed_scale
            else:
                rows = (x.detach() + quantizer.shift).reshape(1, -1)
                upper = torch.tensor([self.upper], device=rows.device)
                scale = float(quantile_rows(rows, upper).clamp_min(1e-8))
            quantizer.set_params(int(quantizer.q), scale)
        elif isinstance(quantizer, TokenQuantizer):
            quantizer.set_params(1.0)
        else:
            raise _unsupported(self, quantizer)


@CALIBRATORS.register_module()
class FPCSCalibrator:
    """FPCS beam search (see :mod:`mmq.quantizers.fpcs`).

    Args:
        role (str): ``'weight'`` or ``'activation'``: how many zero points the uniform
            search starts with.
        uniform_schedule (dict, optional): Overrides of :class:`UniformSchedule`.
        log_schedule (dict, optional): Overrides of :class:`LogSchedule`.
        budget (int): Float elements scored at once (bounds memory).
        search_token_clip (bool): Search a dynamic per-token quantizer's clip ratio (else
            keep every token's full range, clip 1).
    """

    def __init__(self,
                 role: str = 'activation',
                 uniform_schedule: Optional[dict] = None,
                 log_schedule: Optional[dict] = None,
                 budget: int = 2**24,
                 search_token_clip: bool = True) -> None:
        if role not in ('weight', 'activation'):
            raise ValueError(f"role={role!r} must be 'weight' or 'activation'.")
        self.role = role
        self.uniform_schedule = UniformSchedule(**(uniform_schedule or {}))
        self.log_schedule = LogSchedule(**(log_schedule or {}))
        self.budget = budget
        self.search_token_clip = search_token_clip

    def __call__(self, quantizer, x: Tensor,
                 objective: Optional[Objective] = None) -> Optional[float]:
        if isinstance(quantizer, UniformQuantizer):
            result = fpcs_uniform(x, quantizer.bits, quantizer.ch_axis, objective, self.role,
                                  quantizer.fixed_zero_point, self.uniform_schedule, self.budget)
            quantizer.set_from_groups(x, result.params[:, 0], result.params[:, 1])
        elif isinstance(quantizer, LogQuantizer):
            result = fpcs_log(x, quantizer.bits, torch.tensor(quantizer.bases), quantizer.r,
                              objective, quantizer.shift, quantizer.fixed_scale,
                              quantizer.dequant == 'table', self.log_schedule, self.budget)
            quantizer.set_params(int(result.params[0, 0]), float(result.params[0, 1]))
        elif isinstance(quantizer, TokenQuantizer):
            if not self.search_token_clip:
                quantizer.set_params(1.0)
                return None
            result = fpcs_token(x, quantizer.bits, quantizer.feature_axis, objective,
                                self.budget, quantizer.group_size,
                                quantizer.float_zero_point)
            quantizer.set_params(float(result.params[0, 0]))
        else:
            raise _unsupported(self, quantizer)
        return float(result.loss.mean())
