"""``QuantMatMul``: ``a @ b`` with both operands fake-quantized (q @ k^T, attn @ v)."""
from typing import Optional

import torch
from torch import Tensor, nn

from mmq.quantizers.layer_schedule import CalibrationProblem
from mmq.quantizers.base_quantizer import BaseQuantizer
from mmq.registry import MODELS


def _group_axis(q: Optional[BaseQuantizer]) -> Optional[int]:
    # Per-head operands (ch_axis=1 of (B, heads, N, d)) map to axis 1 of the output.
    return getattr(q, 'ch_axis', None)


@MODELS.register_module()
class QuantMatMul(nn.Module):
    """Batched matrix product of two quantized operands.

    Args:
        a_quantizer (BaseQuantizer, optional): Quantizer of the left operand.
        b_quantizer (BaseQuantizer, optional): Quantizer of the right operand.
    """

    def __init__(self, a_quantizer: Optional[BaseQuantizer],
                 b_quantizer: Optional[BaseQuantizer]) -> None:
        super().__init__()
        self.a_quantizer = a_quantizer
        self.b_quantizer = b_quantizer

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.a_quantizer is not None:
            a = self.a_quantizer(a)
        if self.b_quantizer is not None:
            b = self.b_quantizer(b)
        return a @ b

    # calibration -------------------------------------------------------------------------
    def sample_inputs(self, args: tuple, num: int, generator: torch.Generator,
                      queries: Optional[int] = None):
        """``num`` maps (leading axis) of ``a`` and ``b``; of each map of ``a``, ``queries``
        random rows (the output rows they give are scored exactly: ``b`` is kept whole)."""
        a, b = args[0].detach(), args[1].detach()
        if a.shape[0] > num:
            idx = torch.randperm(a.shape[0], generator=generator)[:num]
            a, b = a[idx], b[idx]
        rows = a.shape[-2]
        if queries is not None and rows > queries:
            keep = torch.rand(a.shape[0], rows, generator=generator).argsort(dim=1)[:, :queries]
            keep = keep.to(a.device)  # drawn from the (CPU) seeded generator
            keep = keep.view(a.shape[0], *([1] * (a.dim() - 3)), queries, 1)
            a = a.gather(-2, keep.expand(*a.shape[:-2], queries, a.shape[-1]))
        return a, b

    def calibration_problem(self, samples) -> CalibrationProblem:
        a, b = samples
        return CalibrationProblem(a=a, b=b, qa=self.a_quantizer, qb=self.b_quantizer,
                                  op=torch.matmul, out_axis_a=_group_axis(self.a_quantizer),
                                  out_axis_b=_group_axis(self.b_quantizer), is_product=True)
