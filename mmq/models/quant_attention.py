"""Quantized attention: mmdet's Swin ``WindowMSA`` and timm's ``Attention`` with both
matmuls quantized (q, k, v per head; the post-Softmax matrix by its own quantizer).

timm computes attention with fused scaled-dot-product attention by default; the quantized
form computes the Softmax explicitly so the post-Softmax quantizer sees it.
"""
from typing import Optional, Tuple

import torch
from mmdet.models.backbones.swin import ShiftWindowMSA, WindowMSA
from timm.layers import Attention
from torch import Tensor, nn

from mmq.registry import MODELS
from mmq.config.quant_config import QuantConfig
from .quant_matmul import QuantMatMul


def _adopt(cls, module: nn.Module):
    """A ``cls`` instance that shares ``module``'s parameters, buffers and children."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    return new


def attach_matmuls(module: nn.Module, qcfg: QuantConfig, channels: int) -> None:
    """Add ``qk_matmul`` (q, k), ``av_matmul`` (post-Softmax, v) and the
    ``out_offset`` buffer that attention-output reparameterization sets (zero until then)."""
    module.qk_matmul = QuantMatMul(qcfg.activation(ch_axis=1, role='qk'),  # q, k^T
                                   qcfg.activation(ch_axis=1, role='qk', feature_axis=-2))
    # v per head, or per channel column (its features are the tokens, av's inner dim).
    v = qcfg.activation(ch_axis=1, role='v', feature_axis=-2)
    module.av_matmul = QuantMatMul(qcfg.post_softmax(), v)
    module.register_buffer('out_offset', torch.zeros(
        channels, device=next(module.parameters()).device))


class _OutOffsetCompat:
    """States saved before ``out_offset`` existed load with a zero offset (the value it has
    when no attention-output reparameterization ran)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if getattr(self, 'out_offset', None) is not None:
            state_dict.setdefault(prefix + 'out_offset', torch.zeros_like(self.out_offset))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@MODELS.register_module()
class QuantWindowMSA(_OutOffsetCompat, WindowMSA):
    """Swin window attention with quantized matmuls; parameter names of ``WindowMSA``.

    ``pad_offset`` (zero until LayerNorm reparameterization sets it to the per-channel
    offset ``b``) is subtracted from the input: :class:`QuantShiftWindowMSA` adds it before
    zero-padding, so padded tokens are ``-b`` in the reparameterized space -- exactly the
    zeros they are in the float model.
    """

    @classmethod
    def from_float(cls, module: WindowMSA, qcfg: QuantConfig) -> 'QuantWindowMSA':
        new = _adopt(cls, module)
        attach_matmuls(new, qcfg, module.embed_dims)
        new.register_buffer('pad_offset', torch.zeros(
            module.embed_dims, device=next(module.parameters()).device))
        return new

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x = x - self.pad_offset
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads,
                                  C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.qk_matmul(q * self.scale, k.transpose(-2, -1))
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(
            self.window_size[0] * self.window_size[1], self.window_size[0] * self.window_size[1],
            -1).permute(2, 0, 1).contiguous()
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = attn.view(B // nW, nW, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(self.softmax(attn))
        x = self.av_matmul(attn, v).transpose(1, 2).reshape(B, N, C) - self.out_offset
        return self.proj_drop(self.proj(x))


@MODELS.register_module()
class QuantShiftWindowMSA(ShiftWindowMSA):
    """``ShiftWindowMSA`` whose zero padding stays zero after LayerNorm reparameterization
    (see :class:`QuantWindowMSA`)."""

    @classmethod
    def from_float(cls, module: ShiftWindowMSA, qcfg: QuantConfig) -> 'QuantShiftWindowMSA':
        return _adopt(cls, module)

    def forward(self, query: Tensor, hw_shape) -> Tensor:
        offset = getattr(self.w_msa, 'pad_offset', None)
        if offset is not None:
            query = query + offset
        return super().forward(query, hw_shape)


@MODELS.register_module()
class QuantTimmAttention(_OutOffsetCompat, Attention):
    """timm ``Attention`` with an explicit, quantized Softmax path (no fused SDPA)."""

    @classmethod
    def from_float(cls, module: Attention, qcfg: QuantConfig) -> 'QuantTimmAttention':
        new = _adopt(cls, module)
        attach_matmuls(new, qcfg, module.proj.in_features)
        return new

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        if is_causal:
            raise ValueError('QuantTimmAttention does not support is_causal=True.')
        B, N, C = x.shape
        gate = getattr(self, 'gate', None)
        gate = gate(x).sigmoid() if gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.qk_matmul(q * self.scale, k.transpose(-2, -1))
        if attn_mask is not None:
            attn = attn + attn_mask
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = self.av_matmul(attn, v)
        x = x.transpose(1, 2).reshape(B, N, -1) - self.out_offset
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def output_reparam_parts(module: nn.Module) -> Optional[Tuple[nn.Module, nn.Module]]:
    """``(qkv, proj)`` of a quantized attention whose output (proj's input) is ``A @ v``
    unchanged by anything between (no output norm or gate), else ``None``."""
    from .quant_linear import QuantLinear
    if isinstance(module, QuantTimmAttention):
        if not isinstance(module.norm, nn.Identity) or getattr(module, 'gate', None) is not None:
            return None
    elif not isinstance(module, QuantWindowMSA):
        return None
    if not (isinstance(module.qkv, QuantLinear) and isinstance(module.proj, QuantLinear)):
        return None
    return module.qkv, module.proj
