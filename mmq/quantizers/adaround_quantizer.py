"""AdaRound: learned rounding of a calibrated per-channel uniform weight quantizer (the
rounding variables that block reconstruction trains, ``methods.md`` 5)."""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .uniform_quantizer import UniformQuantizer

ZETA, GAMMA = 1.1, -0.1


class AdaRoundQuantizer(nn.Module):
    """Learned rounding of a calibrated per-channel uniform weight quantizer: ``w_q = s *
    clamp(floor(w / s) + h(V), -z, 2^b - 1 - z)`` with the rectified sigmoid ``h``."""

    def __init__(self, base: UniformQuantizer, weight: Tensor,
                 start: Optional[Tensor] = None) -> None:
        super().__init__()
        self.base = base
        u = weight.detach() / base.scale
        if start is None:
            self.register_buffer('floor', torch.floor(u))
            # h(V) = rest at the start: the soft rounding reproduces the float weight.
            rest = (u - self.floor).clamp(1e-4, 1 - 1e-4)
        else:
            # Start from given grid indices ``start`` (e.g. GPTQ's codes less the zero
            # point): the pair of candidates holds them and leans towards the float weight;
            # the soft weight starts halfway between the two, on their side of 1/2, so that
            # hardening at the start gives ``start`` back.
            start = start.to(u)
            self.register_buffer('floor', torch.where(u < start, start - 1, start))
            mid = ((u - self.floor) + (start - self.floor)) / 2
            rest = torch.where(start > self.floor, mid.clamp(0.5 + 1e-2, 1 - 1e-4),
                               mid.clamp(1e-4, 0.5 - 1e-2))
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def h(self) -> Tensor:
        return (torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def forward(self, w: Tensor, hard: bool = False) -> Tensor:
        if not self.base.enabled:
            return w
        rounding = (self.v >= 0).float() if hard else self.h()
        qmax = 2**self.base.bits - 1
        z = self.base.zero_point
        return torch.clamp(self.floor + rounding, -z, qmax - z) * self.base.scale

    def regulariser(self, beta: float) -> Tensor:
        """``sum_i (1 - |2 h(V_i) - 1|^beta)`` over every rounding variable."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def settled(self, tol: float = 0.01) -> Tuple[int, int]:
        """(variables with ``h(V)`` within ``tol`` of 0 or 1, all variables)."""
        h = self.h().detach()
        return int(((h <= tol) | (h >= 1 - tol)).sum()), h.numel()
