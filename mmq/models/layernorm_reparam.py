"""LayerNorm scale reparameterization (RepQ-ViT), ``methods.md`` 4.

Post-LayerNorm activations differ in range channel by channel. From per-channel
``(s_c, z_c)`` take ``s~ = mean(s_c)``, ``z~ = round(mean(z_c))``, ``r = s_c / s~`` and
``b = s~ (z~ - z_c)``; fold ``1 / r`` and ``-b`` into the LayerNorm and ``r``, ``b`` into the
next Linear (creating a bias if needed). The float function is unchanged; the Linear's input
then takes one per-tensor quantizer. Which LayerNorm feeds which Linear comes from the
backbone adapters (:func:`mmq.models.adapters.layernorm_pairs`).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from mmq.quantizers.uniform import range_to_params
from .quant_linear import QuantLinear


def channel_fold(ch_min: Tensor, ch_max: Tensor, bits: int) -> Tuple[Tensor, Tensor]:
    """``(r, b)`` (float64) that map per-channel ranges onto one per-tensor grid: ``x / r - b``
    has every channel's quantization range on the grid of ``(mean(s_c), round(mean(z_c)))``."""
    s_c, z_c = range_to_params(ch_min.double(), ch_max.double(), bits)
    s_t = s_c.mean()
    z_t = torch.round(z_c.mean())
    r = (s_c / s_t).clamp(1e-2, 1e2)
    return r, s_t * (z_t - z_c)


def fold_into_next_linear(linear: QuantLinear, r: Tensor, b: Tensor) -> None:
    """``W <- W diag(r)``, ``bias <- bias + W diag(r) b``: the Linear undoes ``x / r - b``."""
    dtype = linear.weight.dtype
    w = linear.weight.double() * r  # W diag(r)
    bias = linear.ensure_bias()
    bias.copy_((bias.double() + w @ b).to(dtype))
    linear.weight.copy_(w.to(dtype))


@torch.no_grad()
def reparameterize(norm: nn.LayerNorm, linear: QuantLinear, ch_min: Tensor, ch_max: Tensor,
                   bits: int, offset: Optional[Tensor] = None) -> Tensor:
    """Fold per-channel ranges ``[ch_min, ch_max]`` of the LayerNorm output; returns ``r``.

    ``offset``, if given, receives ``b`` (added to it: reparameterization composes).
    """
    r, b = channel_fold(ch_min, ch_max, bits)
    dtype = norm.weight.dtype
    norm.weight.copy_((norm.weight.double() / r).to(dtype))
    if norm.bias is None:
        norm.bias = nn.Parameter(torch.zeros_like(norm.weight))
    norm.bias.copy_((norm.bias.double() / r - b).to(dtype))
    fold_into_next_linear(linear, r, b)
    if offset is not None:
        offset.copy_((offset.double() / r + b).to(offset.dtype))
    return r.float()
