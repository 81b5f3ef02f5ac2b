"""Attention-output reparameterization (v -> proj): per-channel ranges for proj's input.

proj's input is the attention output ``x = A v`` (per token, a convex mix of v rows). Its
channels differ in range as much as post-LayerNorm activations do, and one per-tensor 4-bit
quantizer serves them badly (measured on DINOv2 ViT-S/14: proj's activation-only output SQNR
rises from 14-20 dB to 20-29 dB with per-channel ranges). With the same ``(r, b)`` as LayerNorm
reparameterization (:func:`mmq.models.layernorm_reparam.channel_fold`): fold ``1 / r`` into
v's rows of qkv (so ``A v`` comes out divided by ``r``, exactly, for any ``A``), subtract
``b`` after the product (the attention's ``out_offset``; a per-channel zero point, which an
integer kernel folds into proj's bias), and fold ``r``, ``b`` into proj. The float function is
unchanged, and proj's input then takes one per-tensor quantizer. Not part of the published
methods (RepQ-ViT reparameterizes post-LayerNorm activations only).
"""
import torch
from torch import Tensor, nn

from .layernorm_reparam import channel_fold, fold_into_next_linear


@torch.no_grad()
def reparameterize_attention_output(attn: nn.Module, qkv: nn.Module, proj: nn.Module,
                                    ch_min: Tensor, ch_max: Tensor, bits: int) -> Tensor:
    """Fold per-channel ranges ``[ch_min, ch_max]`` of ``attn``'s output; returns ``r``.

    ``qkv`` computes q, k, v stacked in that order along its output (rows ``2C:3C`` are v, in
    the channel order of the attention output); ``attn.out_offset`` is subtracted from the
    attention output before ``proj``.
    """
    channels = proj.in_features
    if qkv.out_features != 3 * channels or attn.out_offset.numel() != channels:
        raise ValueError(f'attention-output reparameterization needs qkv with 3 x {channels} '
                         f'outputs, got {qkv.out_features}')
    r, b = channel_fold(ch_min, ch_max, bits)
    dtype = qkv.weight.dtype
    v_rows = slice(2 * channels, 3 * channels)
    qkv.weight[v_rows] = (qkv.weight[v_rows].double() / r.unsqueeze(1)).to(dtype)
    bias = qkv.ensure_bias()
    bias[v_rows] = (bias[v_rows].double() / r).to(dtype)
    attn.out_offset.copy_((attn.out_offset.double() / r + b).to(attn.out_offset.dtype))
    fold_into_next_linear(proj, r, b)
    return r.float()
