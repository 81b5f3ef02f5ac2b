"""Error-compensated weight rounding (GPTQ / Optimal Brain Quantization) on a fixed grid.

For a Linear ``y = x W^T`` whose weight grid (per-output-channel scale ``s`` and zero point
``z``) is already chosen, the codes are picked to minimise the layer's output error on the
calibration inputs, ``tr((W - W_q) H (W - W_q)^T)`` with ``H = sum_t x_t x_t^T``, instead of
rounding every weight to nearest. Input columns are quantized one at a time; the error each
one leaves, ``e_j = (w_j - q_j) / U_jj``, is pushed onto the columns not yet quantized through
the row ``U_j`` of the upper Cholesky factor of ``H^-1`` (``W[:, j+1:] -= e_j U_j,j+1:``),
so later columns absorb it. Columns go in order of decreasing ``H_jj`` (largest inputs first)
and in blocks whose updates to the rest are applied as one product.

Beyond the published methods (AdaLog / APHQ round weights to nearest before
reconstruction). The codes are returned as offsets from ``floor(w / s)`` for
:meth:`~mmq.quantizers.UniformQuantizer.set_rounding`, so the float weight stays the float
model's.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .uniform import uniform_quantize

GPTQ_BLOCK = 128


def _damped(h: Tensor, damp: float) -> Tensor:
    """``H + damp * mean(diag H) I`` (float64 copy), a zero diagonal entry (an input that is
    always zero, whose column costs nothing) set to 1 first."""
    h = h.double().clone()
    diag = torch.diagonal(h)
    diag[diag <= 0] = 1.0
    diag += damp * diag.mean()
    return h


def _inverse_cholesky(h: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1`` (float64)."""
    lower = torch.linalg.cholesky(_damped(h, damp))
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def gptq_codes(weight: Tensor, hessian: Tensor, scale: Tensor, zero_point: Tensor, bits: int,
               damp: float = 0.01, act_order: bool = True,
               block: int = GPTQ_BLOCK) -> Tensor:
    """Integer codes (float tensor, ``weight``'s shape) of a per-output-channel grid.

    Args:
        weight: ``(out, in)``.
        hessian: ``(in, in)``, ``sum_t x_t x_t^T`` over the layer's (quantized) inputs.
        scale, zero_point: ``(out, 1)`` grid parameters.
        bits: Weight bit width.
        damp: Added to the diagonal, as a fraction of its mean (``H`` may be singular).
        act_order: Quantize the columns in order of decreasing ``H_jj``.
        block: Columns per lazy update.
    """
    out_f, in_f = weight.shape
    if hessian.shape != (in_f, in_f):
        raise ValueError(f'hessian of shape {tuple(hessian.shape)} does not match weight '
                         f'{tuple(weight.shape)}.')
    if not torch.isfinite(hessian).all():
        raise ValueError('the input Hessian is not finite: the calibration inputs hold '
                         'NaN / Inf.')
    perm = (torch.argsort(torch.diagonal(hessian), descending=True, stable=True) if act_order
            else torch.arange(in_f, device=weight.device))
    u = _inverse_cholesky(hessian[perm][:, perm], damp)
    w = weight.detach().double()[:, perm].clone()
    s, z = scale.double().reshape(out_f, 1), zero_point.double().reshape(out_f, 1)
    codes = torch.empty_like(w)
    for i1 in range(0, in_f, block):
        i2 = min(i1 + block, in_f)
        w1, u1 = w[:, i1:i2], u[i1:i2, i1:i2]
        err = torch.empty_like(w1)
        for j in range(i2 - i1):
            col = w1[:, j:j + 1]
            c = uniform_quantize(col, s, z, bits)
            codes[:, i1 + j:i1 + j + 1] = c
            e = (col - (c - z) * s) / u1[j, j]
            w1[:, j:] -= e * u1[j:j + 1, j:]
            err[:, j:j + 1] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    out = torch.empty_like(codes)
    out[:, perm] = codes
    return out.to(weight.dtype)


def rounding_offsets(weight: Tensor, codes: Tensor, scale: Tensor,
                     zero_point: Tensor) -> Tensor:
    """``codes - z - floor(w / s)``: what :meth:`UniformQuantizer.set_rounding` adds to
    ``floor(w / s)`` so that the quantizer yields ``codes`` for ``weight``.

    Kept in int8's range: an offset beyond it only occurs for a code at an end of the grid
    of a weight far outside it, which the quantizer's clamp still maps to that end."""
    offsets = codes - zero_point - torch.floor(weight.detach() / scale)
    return offsets.clamp(-128, 127)


def output_error(weight: Tensor, weight_q: Tensor, hessian: Tensor) -> float:
    """``tr((W - W_q) H (W - W_q)^T)``: the summed squared output error over the inputs that
    ``hessian`` was accumulated from."""
    d = (weight.detach() - weight_q.detach()).double()
    return float(((d @ hessian.double()) * d).sum())


def float_target_weight(weight: Tensor, hessian: Tensor, cross: Tensor,
                        damp: float = 0.01) -> Tensor:
    """``V = W C^T (H + damp * mean(diag H) I)^-1``, the least-squares weight for the
    quantized inputs ``X_q`` to reproduce the float output ``X W^T`` (``H = X_q^T X_q``,
    ``C = X_q^T X``): ``||X_q W_q^T - X W^T||^2 = tr((W_q - V) H (W_q - V)^T) + const``, so
    GPTQ on ``V`` with ``H`` minimises the error against the float output."""
    v = torch.linalg.solve(_damped(hessian, damp), cross.double() @ weight.detach().double().T).T
    return v.to(weight.dtype)


def float_target_error(weight: Tensor, weight_q: Tensor, hessian: Tensor, cross: Tensor,
                       float_hessian: Tensor) -> float:
    """``||X_q W_q^T - X W^T||^2 = tr(W_q H W_q^T) - 2 tr(W_q C W^T) + tr(W F W^T)`` with
    ``F = X^T X``."""
    w, wq = weight.detach().double(), weight_q.detach().double()
    return float(((wq @ hessian.double()) * wq).sum() - 2 * ((wq @ cross.double()) * w).sum()
                 + ((w @ float_hessian.double()) * w).sum())


def gptq_rounding(weight: Tensor, hessian: Tensor, scale: Tensor, zero_point: Tensor,
                  bits: int, damp: float = 0.01, cross: Optional[Tensor] = None,
                  float_hessian: Optional[Tensor] = None) -> Tuple[Tensor, float, float]:
    """(rounding offsets, output error with nearest rounding, output error with GPTQ).

    With ``cross`` (``X_q^T X``) and ``float_hessian`` (``X^T X``) the target is the float
    output ``X W^T`` (the weights also absorb the input's quantization error:
    :func:`float_target_weight`); otherwise ``X_q W^T``, GPTQ's own objective."""
    nearest = (uniform_quantize(weight.detach(), scale, zero_point, bits) - zero_point) * scale
    if cross is None:
        codes = gptq_codes(weight, hessian, scale, zero_point, bits, damp)
        return (rounding_offsets(weight, codes, scale, zero_point),
                output_error(weight, nearest, hessian),
                output_error(weight, (codes - zero_point) * scale, hessian))
    target = float_target_weight(weight, hessian, cross, damp)
    codes = gptq_codes(target, hessian, scale, zero_point, bits, damp)
    return (rounding_offsets(weight, codes, scale, zero_point),
            float_target_error(weight, nearest, hessian, cross, float_hessian),
            float_target_error(weight, (codes - zero_point) * scale, hessian, cross,
                               float_hessian))
