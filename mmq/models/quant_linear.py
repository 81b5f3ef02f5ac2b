"""``QuantLinear``: an ``nn.Linear`` with a per-channel weight quantizer and an input
quantizer; its parameter names are the float layer's, so float checkpoints load unchanged."""
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmq.quantizers.layer_schedule import CalibrationProblem
from mmq.quantizers import fold_shift_into_bias
from mmq.quantizers.base_quantizer import BaseQuantizer
from mmq.registry import MODELS


def sample_rows(x: Tensor, num: int, generator: torch.Generator, outliers: int = 0) -> Tensor:
    """A seeded subsample of ``num`` rows of ``x`` (``(rows, features)``): the ``outliers``
    rows of largest max-abs value (e.g. DINOv2's high-norm tokens, which a random sample
    can miss), then a random sample of the others."""
    if x.shape[0] <= num:
        return x
    outliers = min(max(0, outliers), num)
    if outliers == 0:
        idx = torch.randperm(x.shape[0], generator=generator)[:num]
        return x[idx]
    top = x.abs().amax(dim=1).topk(outliers).indices
    rest = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    rest[top] = False
    others = rest.nonzero().squeeze(1)
    pick = torch.randperm(others.numel(), generator=generator)[:num - outliers]
    return x[torch.cat([top, others[pick.to(others.device)]])]


@MODELS.register_module()
class QuantLinear(nn.Linear):
    """Linear layer with fake-quantized weight and input.

    Args:
        in_features, out_features, bias: As ``nn.Linear``.
        weight_quantizer (BaseQuantizer, optional): Per-output-channel weight quantizer.
        input_quantizer (BaseQuantizer, optional): Input quantizer; ``None`` keeps it float.
    """

    def __init__(self,
                 in_features: int,
                 out_features: int,
                 bias: bool = True,
                 weight_quantizer: Optional[BaseQuantizer] = None,
                 input_quantizer: Optional[BaseQuantizer] = None) -> None:
        super().__init__(in_features, out_features, bias)
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer: Optional[BaseQuantizer],
                   input_quantizer: Optional[BaseQuantizer]) -> 'QuantLinear':
        """Wrap ``linear``'s own parameters (shared, not copied)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new.weight_quantizer = weight_quantizer
        new.input_quantizer = input_quantizer
        return new

    def ensure_bias(self) -> Tensor:
        """Create a zero bias if the layer has none (reparameterizations add to it)."""
        if self.bias is None:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=self.weight.dtype,
                                                 device=self.weight.device))
        return self.bias

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.bias is None and prefix + 'bias' in state_dict:
            self.ensure_bias()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fold_input_shift(self) -> bool:
        """Bias reparameterization: once the post-GELU input quantizer ``Q(x + c) - c`` is
        calibrated, feed ``Q(x + c)`` (non-negative, no subtraction) and fold ``-c W_q 1``
        into the bias (computed in :meth:`forward` from the current quantized weight, so
        float mode stays exact)."""
        q = self.input_quantizer
        if q is None or getattr(q, 'shift', 0.0) == 0.0 or bool(q.shift_folded):
            return False
        q.shift_folded.fill_(True)
        return True

    def quantized_weight(self) -> Tensor:
        w = self.weight
        return self.weight_quantizer(w) if self.weight_quantizer is not None else w

    def weight_input(self, x: Tensor) -> Tensor:
        """What the weight multiplies for input ``x``: the input quantizer's output, less
        the post-GELU shift where :meth:`fold_input_shift` moved it into the bias."""
        q = self.input_quantizer
        if q is None:
            return x
        out = q(x)
        if q.is_active and bool(getattr(q, 'shift_folded', False)):
            out = out - q.shift
        return out

    def weight_input_rows(self, x: Tensor) -> Tensor:
        """``(rows, in_features)``: the rows the weight multiplies for input ``x``."""
        return self.weight_input(x).reshape(-1, self.in_features)

    def float_input_rows(self, x: Tensor) -> Tensor:
        """``(rows, in_features)``: the unquantized input ``x`` as rows."""
        return x.reshape(-1, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias, q = self.quantized_weight(), self.bias, self.input_quantizer
        if q is not None:
            x = q(x)
            if q.is_active and bool(getattr(q, 'shift_folded', False)):
                bias = fold_shift_into_bias(weight, bias, q.shift)
        return F.linear(x, weight, bias)

    # calibration -------------------------------------------------------------------------
    def sample_inputs(self, args: tuple, num: int, generator: torch.Generator,
                      outliers: int = 0) -> Tensor:
        return sample_rows(args[0].detach().reshape(-1, self.in_features), num, generator,
                           outliers)

    def calibration_problem(self, rows: Tensor) -> CalibrationProblem:
        return CalibrationProblem(
            a=rows, b=self.weight.detach(), qa=self.input_quantizer, qb=self.weight_quantizer,
            op=lambda a, b: torch.matmul(a, b.transpose(-1, -2)), out_axis_a=None,
            out_axis_b=-1, linear=True)
