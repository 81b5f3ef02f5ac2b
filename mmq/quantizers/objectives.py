"""Search objectives: map a batch of ``K`` candidate-quantized tensors ``(K, *x.shape)`` to
losses ``(K, groups)``.

FPCS scores candidates by the MSE of the *layer output* (the ``F.linear`` / matmul / conv
output) against full precision; the MSE of the tensor itself ("self" MSE) is used only to
initialise. ``groups`` follow the searched tensor's granularity: one column per tensor, per
output channel or per head.
"""
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
        terms = torch.matmul(d, self.gram).add_(self.cross).mul_(d)
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


class IntegerLinearWeightMSE:
    """Output MSE per output channel of weight candidates of ``a_q @ w^T`` against the float
    output ``ref`` ``(rows, out)``, where the quantized input is ``a_q = codes * a_scale``
    with small integer ``codes`` (a per-tensor uniform quantizer's ``q - z``).

    Called on float candidates it is the plain output MSE. The uniform FPCS search
    recognises it and scores per-channel candidates ``w_k = c_k * s_k`` (integer codes
    ``c_k``, one scale per output channel) from the exact integer products
    ``codes @ c_k^T`` (``torch._int_mm``, int32 accumulation), scaled by ``a_scale * s_k``
    once per output: the same losses up to float rounding (the products are exact), several
    times faster on a CPU than the float matmul.
    """

    def __init__(self, a_q: Tensor, codes: Tensor, a_scale: float, ref: Tensor) -> None:
        self.codes_t = codes.to(torch.int8).t().contiguous()  # (in, rows)
        self.a_scale = a_scale
        self.ref_t = ref.t().contiguous().unsqueeze(0)  # (1, out, rows)
        self._float = output_mse(lambda wq: torch.matmul(a_q, wq.transpose(-1, -2)), ref, -1)

    @classmethod
    def from_quantized(cls, a_q: Tensor, scale: Tensor,
                       ref: Tensor) -> Optional['IntegerLinearWeightMSE']:
        """The objective when ``a_q`` is exactly ``codes * scale`` with a single ``scale``
        and integer codes within int8 (else ``None``: use the float objective)."""
        if scale.numel() != 1 or not bool(scale.reshape(()) > 0) or a_q.dim() != 2:
            return None
        s = float(scale)
        codes = torch.round(a_q / s)
        if codes.abs().max() > INT_CODE_MAX or not torch.equal(codes * s, a_q):
            return None
        return cls(a_q, codes, s, ref)

    def __call__(self, wq: Tensor) -> Tensor:
        return self._float(wq)

    def score_codes(self, codes: Tensor, w_scale: Tensor) -> Tensor:
        """Losses ``(K, out)`` of candidates with int8 codes ``(K, out, in)`` and scales
        ``(K, out)``."""
        k, out, d = codes.shape
        acc = torch._int_mm(codes.reshape(k * out, d), self.codes_t).reshape(k, out, -1)
        scale = (w_scale * self.a_scale).unsqueeze(-1).to(self.ref_t.dtype)
        return scaled_products_mse(acc, scale, self.ref_t)
