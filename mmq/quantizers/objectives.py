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

Objective = Callable[[Tensor], Tensor]


def reduce_to_groups(err: Tensor, ch_axis: Optional[int]) -> Tensor:
    """Mean of ``err`` (``(K, *shape)``) over all axes but K and ``ch_axis`` of ``shape``."""
    if ch_axis is None:
        return err.reshape(err.shape[0], -1).mean(dim=1, keepdim=True)
    axis = (ch_axis + 1 if ch_axis >= 0 else ch_axis) % err.dim()
    dims = tuple(d for d in range(1, err.dim()) if d != axis)
    out = err.mean(dim=dims) if dims else err
    return out


def _squared_error(out: Tensor, ref: Tensor) -> Tensor:
    if out.requires_grad or out._base is not None:
        return (out - ref).pow(2)
    return out.sub_(ref).square_()  # a fresh candidate output: reuse its memory


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
    grouped along ``out_ch_axis`` of the output (``-1`` for a Linear's output channels)."""
    return lambda xq: reduce_to_groups(_squared_error(forward(xq), reference), out_ch_axis)


def sqnr_db(reference: Tensor, output: Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``output`` against ``reference`` in dB."""
    noise = (output - reference).pow(2).mean().clamp_min(1e-30)
    return float(10 * torch.log10(reference.pow(2).mean().clamp_min(1e-30) / noise))
