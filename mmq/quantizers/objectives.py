"""Search objectives: map a batch of ``K`` candidate-quantized tensors ``(K, *x.shape)`` to
losses ``(K, groups)``.

FPCS scores candidates by the MSE of the *layer output* (the ``F.linear`` / matmul / conv
output) against full precision; the MSE of the tensor itself ("self" MSE) is used only to
initialise. ``groups`` follow the searched tensor's granularity: one column per tensor, per
output channel or per head.
"""
import math
from typing import Callable, Optional

import torch
from torch import Tensor

from .fused_scores import canonical_groups, grouped_mse, scaled_products_mse

Objective = Callable[[Tensor], Tensor]


def reduce_to_groups(err: Tensor, ch_axis: Optional[int]) -> Tensor:
    """Mean of ``err`` (``(K, *shape)``) over all axes but K and ``ch_axis`` of ``shape``."""
    if ch_axis is None:
        return err.reshape(err.shape[0], -1).mean(dim=1, keepdim=True)
    axis = (ch_axis + 1 if ch_axis >= 0 else ch_axis) % err.dim()
    dims = tuple(d for d in range(1, err.dim()) if d != axis)
    out = err.mean(dim=dims) if dims else err
    return out


class SelfMSE:
    """MSE of the quantized tensor against ``x`` itself (an :data:`Objective`); the uniform
    search recognises it and scores its candidates with a fused kernel instead."""

    def __init__(self, x: Tensor, ch_axis: Optional[int] = None) -> None:
        self.x, self.ch_axis = x, ch_axis

    def __call__(self, xq: Tensor) -> Tensor:
        return reduce_to_groups((xq - self.x).pow(2), self.ch_axis)


def self_mse(x: Tensor, ch_axis: Optional[int] = None) -> Objective:
    """MSE of the quantized tensor against ``x`` itself."""
    return SelfMSE(x, ch_axis)


def candidate_matmul(left: Tensor, right: Tensor, candidates_left: bool) -> Tensor:
    """``left @ right`` where one operand holds ``K`` candidates along a leading dim
    (``left`` when ``candidates_left``) and the other is fixed, without copying the fixed
    operand ``K`` times: ``torch.matmul`` would expand it to ``(K, *batch, ...)`` and copy
    it (as costly as the product itself for attention maps), unless it is a matrix that the
    candidates' rows fold into. Elsewhere one product per candidate, into one output."""
    if candidates_left and right.dim() == 2:
        return torch.matmul(left, right)  # (K * rows, D) @ (D, N): one product, no copies
    if torch.is_grad_enabled() and (left.requires_grad or right.requires_grad):
        return torch.matmul(left, right)
    k = left.shape[0] if candidates_left else right.shape[0]
    first = (torch.matmul(left[0], right) if candidates_left
             else torch.matmul(left, right[0]))
    out = first.new_empty((k, *first.shape))
    out[0] = first
    for i in range(1, k):
        if candidates_left:
            torch.matmul(left[i], right, out=out[i])
        else:
            torch.matmul(left, right[i], out=out[i])
    return out


def output_mse(forward: Callable[[Tensor], Tensor], reference: Tensor,
               out_ch_axis: Optional[int] = None) -> Objective:
    """MSE of ``forward(candidates)`` (batched over K) against the float ``reference`` output,
    grouped along ``out_ch_axis`` of the output (``-1`` for a Linear's output channels).

    Without autograd the error and its reduction are one fused pass
    (:func:`mmq.quantizers.fused_scores.grouped_mse`)."""
    ref = canonical_groups(reference, out_ch_axis)

    def objective(xq: Tensor) -> Tensor:
        out = forward(xq)
        if out.requires_grad:
            return reduce_to_groups((out - reference).pow(2), out_ch_axis)
        axis = None if out_ch_axis is None else out_ch_axis % reference.dim()
        return grouped_mse(canonical_groups(out, axis, leading=1), ref)

    return objective


def sqnr_db(reference: Tensor, output: Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``output`` against ``reference`` in dB."""
    noise = (output - reference).pow(2).mean().clamp_min(1e-30)
    return float(10 * torch.log10(reference.pow(2).mean().clamp_min(1e-30) / noise))


class InputGramMSE:
    """Output MSE of candidates ``a_k`` for the left operand of ``a @ b`` (batched over any
    leading dims) with ``b`` held at ``b_q``, against the float output ``a @ b``, grouped
    along ``group_axis`` of the output (``None``: per tensor), computed through the
    ``(D, D)`` Gram matrices of ``b_q`` instead of the ``(M, N)`` outputs.

    With ``d = a_k - a`` and ``E = a (b_q - b)`` the output error is ``d b_q + E``, so
    ``||d b_q + E||^2 = sum(d (b_q b_q^T) * d) + 2 sum(d * (E b_q^T)) + ||E||^2``: every term
    is of the size of the error (no cancellation against the output's size) and a candidate
    costs ``M x D^2`` instead of ``M x D x N`` per batch entry (cheaper when ``N > D``: a
    Linear with more outputs than inputs, ``q`` of ``q @ k^T`` with more keys than head
    dims). Same losses as :func:`output_mse` up to float rounding.
    """

    def __init__(self, a: Tensor, b: Tensor, b_q: Tensor,
                 group_axis: Optional[int] = None) -> None:
        self.a, self.group_axis = a, group_axis
        self.gram = b_q @ b_q.transpose(-1, -2)
        err = a @ (b_q - b)
        self.cross = 2 * (err @ b_q.transpose(-1, -2))
        self.const = canonical_groups(err.pow(2), group_axis).sum(dim=(1, 3))  # (1, G)
        self.count = err.numel() // self.const.shape[1]

    def __call__(self, xq: Tensor) -> Tensor:
        d = xq - self.a
        terms = candidate_matmul(d, self.gram, True).add_(self.cross).mul_(d)
        loss = canonical_groups(terms, self.group_axis, leading=1).sum(dim=(1, 3))
        return (loss + self.const) / self.count


class LinearWeightMSE:
    """Output MSE per output channel of candidates ``w_k`` for the weight of ``a @ w^T`` with
    the input held at ``a_q``, against the float output, through the ``(in, in)`` Gram matrix
    of ``a_q`` (the weight-side twin of :class:`InputGramMSE`).

    With ``d = w_k - w`` and ``E = (a_q - a) w^T``, channel ``o``'s error is
    ``a_q d_o + E_o``: ``||.||^2 = d_o (a_q^T a_q) d_o + 2 d_o . (a_q^T E_o) + ||E_o||^2``, so a
    candidate costs ``out x in^2`` instead of ``rows x in x out`` (cheaper when
    ``rows > in``).
    """

    def __init__(self, a: Tensor, a_q: Tensor, w: Tensor) -> None:
        self.w = w
        self.gram = a_q.t() @ a_q
        err = (a_q - a) @ w.t()
        self.cross = 2 * (err.t() @ a_q)
        self.const = err.pow(2).sum(0)
        self.rows = a.shape[0]

    def __call__(self, wq: Tensor) -> Tensor:
        d = wq - self.w
        loss = (d @ self.gram).add_(self.cross).mul_(d).sum(dim=-1) + self.const
        return loss / self.rows


INT_CODE_MAX = 127  # int8 operands of torch._int_mm


def _batch_int_mm(left: Tensor, right: Tensor, candidates_left: bool) -> Tensor:
    """Exact int32 products of ``K`` int8 candidates with a fixed int8 operand, per batch
    entry: candidates ``(K, *batch, M, D)`` times fixed ``(*batch, D, N)`` when
    ``candidates_left``, else fixed ``(*batch, M, D)`` times candidates ``(K, *batch, D, N)``;
    returns ``(K, *batch, M, N)``. The ``K`` candidates share one ``torch._int_mm`` per batch
    entry (stacked along ``M`` or ``N``)."""
    cands, fixed = (left, right) if candidates_left else (right, left)
    k, batch = cands.shape[0], cands.shape[1:-2]
    cands = cands.reshape(k, -1, *cands.shape[-2:])
    fixed = fixed.reshape(-1, *fixed.shape[-2:])
    if fixed.shape[0] == 1 and candidates_left:  # a Linear: one product, no copies
        acc = torch._int_mm(cands.reshape(-1, cands.shape[-1]), fixed[0])
        return acc.reshape(k, *batch, cands.shape[-2], -1)
    b = fixed.shape[0]
    if candidates_left:  # per entry (K * M, D) @ (D, N): candidates stacked along M
        m, d, n = cands.shape[-2], cands.shape[-1], fixed.shape[-1]
        stacked = cands.transpose(0, 1).reshape(b, k * m, d)
        acc = torch.empty(b, k * m, n, dtype=torch.int32, device=fixed.device)
    else:  # per entry (M, D) @ (D, K * N): candidates stacked along N
        m, d, n = fixed.shape[-2], cands.shape[-2], cands.shape[-1]
        stacked = cands.permute(1, 2, 0, 3).reshape(b, d, k * n)
        acc = torch.empty(b, m, k * n, dtype=torch.int32, device=fixed.device)
    for i in range(b):
        if candidates_left:
            torch._int_mm(stacked[i], fixed[i], out=acc[i])
        else:
            torch._int_mm(fixed[i], stacked[i], out=acc[i])
    # Views, no copies: the loss kernel reads any strides.
    acc = (acc.view(b, k, m, n).transpose(0, 1) if candidates_left
           else acc.view(b, m, k, n).permute(2, 0, 1, 3))
    return acc.view(k, *batch, m, n)


class IntegerProductMSE:
    """Output MSE of uniform candidates for one operand of a product -- a Linear's
    ``a @ w^T`` or a batched ``a @ b`` (q @ k^T) -- with the other operand held at its
    quantized value ``codes * scale`` (int8 codes, the scale constant along the summed dim),
    from the exact integer products of the codes (``torch._int_mm``, int32 accumulation),
    scaled once per output element: the same losses as :func:`output_mse` up to float
    rounding (the products are exact), several times faster on a CPU than float matmuls.

    FPCS's uniform search recognises it (:meth:`accepts`) and scores its candidates with
    :meth:`score_codes`; called on float candidates it is the plain output MSE. Build it
    with :meth:`from_quantized`.
    """

    def __init__(self, fixed_codes: Tensor, fixed_factor: Tensor, candidate_shape: tuple,
                 candidate_axis: Optional[int], linear: bool, which: str, ref: Tensor,
                 float_objective: Objective) -> None:
        self.fixed_codes = fixed_codes
        self.candidate_shape, self.candidate_axis = candidate_shape, candidate_axis
        # A Linear's weight candidates are the left operand of out^T = w @ a^T.
        self.candidates_left = which == 'a' or linear
        layout = ref.t() if linear and which == 'b' else ref
        self.ref = layout.contiguous().unsqueeze(0)
        self.fixed = fixed_factor.unsqueeze(0)
        self.group_dim = 0 if candidate_axis is None else candidate_axis % layout.dim() + 1
        self._float = float_objective

    @classmethod
    def from_quantized(cls, fixed_q: Tensor, fixed_scale: Tensor, which: str, linear: bool,
                       candidate_shape: tuple, candidate_axis: Optional[int], ref: Tensor,
                       op) -> Optional['IntegerProductMSE']:
        """The objective for candidates of operand ``which`` (``'a'`` or ``'b'``) of
        ``op(a, b)`` (a Linear's ``a @ b^T`` when ``linear``, else a batched ``a @ b``),
        the other operand quantized to ``fixed_q`` with scale ``fixed_scale`` (broadcasting
        against it); ``None`` unless ``fixed_q`` is exactly int8 codes times that scale,
        the scale is constant along the summed dim, and the candidates' group axis is not
        the summed dim (then use a float objective)."""
        shape = tuple(candidate_shape)
        if len(shape) < 2 or fixed_q.dim() < 2:
            return None
        scale = torch.as_tensor(fixed_scale).to(fixed_q)
        # Layout as a product L @ R with the summed dim last of L, second last of R.
        if linear:
            if fixed_q.dim() != 2 or len(shape) != 2:
                return None
            fixed_layout = fixed_q.t()  # a^T (in, rows) or w^T (in, out)
            if scale.dim() != 2 and scale.numel() != 1:
                return None
            scale = scale.reshape(scale.shape if scale.dim() == 2 else (1, 1)).t()
            summed_fixed, summed_cand = -2, -1
        else:
            if fixed_q.shape[:-2] != shape[:-2]:
                return None
            fixed_layout = fixed_q
            summed_fixed, summed_cand = (-1, -2) if which == 'b' else (-2, -1)
        if scale.dim() > fixed_layout.dim() or (scale.dim() >= -summed_fixed
                                                and scale.shape[summed_fixed] != 1):
            return None
        if candidate_axis is not None and candidate_axis % len(shape) == summed_cand % len(shape):
            return None
        if not bool((scale > 0).all()):
            return None
        codes = torch.round(fixed_layout / scale)
        if codes.abs().max() > INT_CODE_MAX or not torch.equal(codes * scale, fixed_layout):
            return None
        # In the layout above the scale is already the factor on the product's output:
        # (..., M|1, 1) of a left fixed operand, (..., 1, N|1) of a right one.
        float_objective = output_mse(
            (lambda xq: op(xq, fixed_q)) if which == 'a' else (lambda xq: op(fixed_q, xq)),
            ref, -1 if linear and which == 'b' and candidate_axis is not None
            else candidate_axis)
        return cls(codes.to(torch.int8).contiguous(), scale, shape, candidate_axis, linear,
                   which, ref, float_objective)

    @property
    def elements_per_candidate(self) -> int:
        """Elements a candidate occupies while scored (its products can outnumber its own
        elements: a Linear with more outputs than inputs)."""
        return max(math.prod(self.candidate_shape), self.ref.numel())

    def accepts(self, x: Tensor, ch_axis: Optional[int]) -> bool:
        """Whether candidates for ``x`` grouped along ``ch_axis`` are the ones this objective
        scores from integer codes."""
        norm = (lambda a: None if a is None else a % len(self.candidate_shape))  # noqa: E731
        return (tuple(x.shape) == self.candidate_shape
                and norm(ch_axis) == norm(self.candidate_axis))

    def __call__(self, xq: Tensor) -> Tensor:
        return self._float(xq)

    def score_codes(self, codes: Tensor, scale: Tensor) -> Tensor:
        """Losses ``(K, groups)`` of candidates with int8 codes ``(K, *candidate_shape)``
        and scales ``(K, groups)``."""
        if self.candidates_left:
            acc = _batch_int_mm(codes, self.fixed_codes, True)
        else:
            acc = _batch_int_mm(self.fixed_codes, codes, False)
        k, groups = scale.shape
        shape = [k] + [1] * (acc.dim() - 1)
        if self.group_dim:
            shape[self.group_dim] = groups
        return scaled_products_mse(acc, scale.reshape(shape).to(self.ref.dtype), self.fixed,
                                   self.ref, self.group_dim)
