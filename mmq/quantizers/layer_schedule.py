"""A layer's calibration problem: two operands, their quantizers, and the layer op.

Every quantized layer is ``out = op(a, b)``: a Linear is ``a @ W^T`` (``a`` the input rows,
``b`` the weight), a Conv2d the same on unfolded patches, a MatMul ``a @ b``. FPCS scores one
operand's candidates with the other operand held at its current quantized value, so one
schedule serves every layer type.
"""
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .calibrators import FPCSCalibrator
from .base_quantizer import BaseQuantizer
from .objectives import (INT_CODE_MAX, InputGramMSE, IntegerProductMSE, LinearWeightMSE,
                         Objective, candidate_matmul, output_mse, self_mse, sqnr_db)
from .uniform_quantizer import UniformQuantizer


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
    linear: bool = False  # op(a, b) == a @ b^T with a (rows, in), b (out, in)
    is_product: bool = False  # op(a, b) == a @ b (or a @ b^T when linear), batched
    # op(a, b) == a @ weight_matrix(b)^T: a layer that reshapes its weight (a convolution on
    # unfolded patches: (..., out, C, kh, kw) -> (..., out, C * kh * kw)); searched as is.
    weight_matrix: Optional[Callable[[Tensor], Tensor]] = None

    def __post_init__(self) -> None:
        self.is_product = self.is_product or self.linear

    def candidates_op(self, which: str, other: Tensor) -> Callable[[Tensor], Tensor]:
        """``op`` batched over a leading candidate dim of operand ``which``, the other operand
        held at ``other``; for products without copying ``other`` once per candidate
        (:func:`candidate_matmul`)."""
        matrix = self.weight_matrix or (lambda b: b)
        if self.linear or self.weight_matrix is not None:  # a @ b^T
            if which == 'a':
                return lambda xq: candidate_matmul(xq, matrix(other).transpose(-1, -2), True)
            return lambda xq: candidate_matmul(other, matrix(xq).transpose(-1, -2), False)
        if not self.is_product:
            return ((lambda xq: self.op(xq, other)) if which == 'a'
                    else (lambda xq: self.op(other, xq)))
        if which == 'a':
            return lambda xq: candidate_matmul(xq, other, True)
        return lambda xq: candidate_matmul(other, xq, False)

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


def gram_enabled() -> bool:
    """Whether Linear output MSEs may be computed through Gram matrices (``MMQ_GRAM`` not
    ``0``); the same losses up to float rounding, fewer FLOPs where it is chosen."""
    return os.environ.get('MMQ_GRAM', '1') != '0'


def integer_scoring_enabled(x: Tensor) -> bool:
    """Whether Linear weight candidates may be scored from exact int8 products (``MMQ_INT``
    not ``0``, a CPU tensor, and ``torch._int_mm`` available): the same losses up to float
    rounding, several times faster than float matmuls on a CPU (a GPU keeps float)."""
    return (os.environ.get('MMQ_INT', '1') != '0' and x.device.type == 'cpu'
            and hasattr(torch, '_int_mm'))


# How many times faster an int8 product is than the float one on a CPU (torch._int_mm
# against float matmuls of the calibration shapes: 4.2-5.2x measured on this 2-core
# machine); it decides between integer products and Gram matrices for an input's candidates.
INT_SPEEDUP = 4


def integer_objective(problem: CalibrationProblem, which: str, ref: Tensor,
                      other: Tensor) -> Optional[IntegerProductMSE]:
    """Candidates of operand ``which`` scored from exact int8 products
    (:class:`IntegerProductMSE`) against ``other``, the other operand's quantized value, when
    the candidates are uniform, the other operand is uniformly quantized (static scales, or a
    dynamic per-token quantizer's per-row ones) with codes that fit int8, and integer scoring
    is enabled; else ``None``."""
    cand_q, fixed_q = (problem.qb, problem.qa) if which == 'b' else (problem.qa, problem.qb)
    fixed = problem.a if which == 'b' else problem.b
    if not ((problem.linear or problem.is_product) and integer_scoring_enabled(fixed)
            and isinstance(cand_q, UniformQuantizer) and 2**cand_q.bits - 1 <= INT_CODE_MAX
            and hasattr(fixed_q, 'integer_scale') and bool(fixed_q.calibrated)):
        return None
    scale = fixed_q.integer_scale(fixed)
    if scale is None:  # e.g. per-group token scales: no scale per row to factor out
        return None
    cand = problem.b if which == 'b' else problem.a
    return IntegerProductMSE.from_quantized(
        other, scale, which, problem.linear, tuple(cand.shape),
        cand_q.ch_axis, ref, problem.op)


def output_objective(problem: CalibrationProblem, which: str, ref: Tensor) -> Objective:
    """The output-MSE objective for candidates of operand ``which``, the other operand held
    at its quantized value: from exact int8 products where both operands are uniformly
    quantized (:func:`integer_objective`, on a CPU) unless Gram matrices cost less; else
    through Gram matrices where that costs fewer FLOPs (the left operand of a product with
    more output columns than inner dims; a Linear weight scored on more rows than inputs),
    else the direct batched op."""
    gram = gram_enabled()
    other = problem.quantized('a' if which == 'b' else 'b')  # held at its quantized value
    integer = integer_objective(problem, which, ref, other)
    if which == 'b':
        if integer is not None:
            return integer
        if gram and problem.linear and problem.a.shape[0] > problem.a.shape[1]:
            return LinearWeightMSE(problem.a, other, problem.b)
        return output_mse(problem.candidates_op('b', other), ref, problem.out_axis_b)
    # The right operand in a @ b layout (..., D, N): a Linear holds its weight as (N, D).
    b, b_q = ((problem.b.t(), other.t()) if problem.linear else (problem.b, other))
    # Per candidate row: D x N integer MACs against D x D float ones through the Gram matrix.
    if integer is not None and b.shape[-1] < INT_SPEEDUP * b.shape[-2]:
        return integer
    if gram and problem.is_product and b.shape[-1] > b.shape[-2]:
        return InputGramMSE(problem.a, b, b_q, problem.out_axis_a)
    if integer is not None:
        return integer
    return output_mse(problem.candidates_op('a', other), ref, problem.out_axis_a)


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
            calibrators[which](q, x, output_objective(problem, which, ref))
    return sqnr_init, problem.sqnr_db()
