"""A layer's calibration problem: two operands, their quantizers, and the layer op.

Every quantized layer is ``out = op(a, b)``: a Linear is ``a @ W^T`` (``a`` the input rows,
``b`` the weight), a Conv2d the same on unfolded patches, a MatMul ``a @ b``. FPCS scores one
operand's candidates with the other operand held at its current quantized value, so one
schedule serves every layer type.
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .calibrators import FPCSCalibrator
from .base_quantizer import BaseQuantizer
from .objectives import output_mse, self_mse, sqnr_db


@dataclass
class CalibrationProblem:
    """Operands ``a`` and ``b`` (either may have no quantizer), ``op(a, b)`` broadcasting a
    leading candidate dim on either operand, and the output axis that groups each operand's
    independent parameters (``None``: per tensor)."""
    a: Tensor
    b: Tensor
    qa: Optional[BaseQuantizer]
    qb: Optional[BaseQuantizer]
    op: Callable[[Tensor, Tensor], Tensor]
    out_axis_a: Optional[int]
    out_axis_b: Optional[int]

    def quantized(self, which: str) -> Tensor:
        x, q = (self.a, self.qa) if which == 'a' else (self.b, self.qb)
        if q is None or not bool(q.calibrated):
            return x
        with torch.no_grad():
            return q(x)

    def sqnr_db(self) -> float:
        """Output SQNR of the layer with both operands quantized (dB)."""
        with torch.no_grad():
            ref = self.op(self.a, self.b)
            return sqnr_db(ref, self.op(self.quantized('a'), self.quantized('b')))


CalibratorFactory = Callable[[str], object]  # role ('weight' / 'activation') -> calibrator


def solve(problem: CalibrationProblem, make_calibrator: CalibratorFactory, rounds: int,
          b_is_weight: bool) -> Tuple[float, float]:
    """Calibrate both operands: initialise each on its own tensor (self-MSE for FPCS), then,
    for an output-aware (FPCS) calibrator, ``rounds`` of output-MSE search alternating
    [b with a quantized, a with b quantized].

    Returns the layer's output SQNR (dB) after the initialisation and at the end.
    """
    roles = dict(a='activation', b='weight' if b_is_weight else 'activation')
    operands = [('b', problem.b, problem.qb), ('a', problem.a, problem.qa)]
    calibrators = {which: make_calibrator(roles[which]) for which in roles}
    for which, x, q in operands:
        if q is not None:
            calibrators[which](q, x, self_mse(x, getattr(q, 'ch_axis', None)))
    sqnr_init = problem.sqnr_db()
    if not isinstance(calibrators['a'], FPCSCalibrator):
        return sqnr_init, sqnr_init
    with torch.no_grad():
        ref = problem.op(problem.a, problem.b)
    for _ in range(rounds):
        for which, x, q in operands:
            if q is None:
                continue
            if which == 'b':
                other = problem.quantized('a')
                forward = (lambda xq, o=other: problem.op(o, xq))
                axis = problem.out_axis_b
            else:
                other = problem.quantized('b')
                forward = (lambda xq, o=other: problem.op(xq, o))
                axis = problem.out_axis_a
            calibrators[which](q, x, output_mse(forward, ref, axis))
    return sqnr_init, problem.sqnr_db()
