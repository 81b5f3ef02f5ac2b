"""The model transform: swap float modules for quantized ones by type, in eager mode.

Which modules are attention and which layer inputs are special comes from the backbone
adapters (:mod:`mmq.models.adapters`); this file knows no backbone.

Placement (``methods.md`` 1-4): weights per output channel; Linear / Conv inputs per tensor;
q, k and v per head; the post-Softmax matrix by ``qcfg.softmax`` (AdaLog by default); the
post-GELU fc2 input by ``qcfg.gelu`` (shifted AdaLog by default); a post-ReLU fc2 input (after
MR) uniform with zero point 0; the patch-embedding input (the first conv of a conv stem)
stays float; ConvTranspose2d, LayerNorm, Softmax and GELU stay float.
"""
from typing import Dict, Iterable, Optional

from torch import nn

from mmq.quantizers.base_quantizer import BaseQuantizer
from .adapters import input_roles, is_quantized_attention, quantized_attention
from mmq.config.quant_config import QuantConfig
from .quant_conv import QuantConv2d
from .quant_linear import QuantLinear
from .quant_matmul import QuantMatMul

QUANT_LAYERS = (QuantLinear, QuantConv2d, QuantMatMul)


def _input_quantizer(role: str, qcfg: QuantConfig, conv_channels: Optional[int] = None):
    """A Linear's input quantizer (a Conv2d's with ``conv_channels``, its input channels)."""
    if role == 'image':
        return None  # the patch-embedding input (pixels) stays float
    if role == 'gelu':
        return qcfg.post_gelu()
    if role == 'relu':
        return qcfg.post_relu()
    return qcfg.activation(role=role if role in ('ln_input', 'proj_input') else 'other',
                           pixel_channels=conv_channels)


def _swap(module: nn.Module, roles: Dict[int, str], qcfg: QuantConfig) -> nn.Module:
    if isinstance(module, QUANT_LAYERS) or is_quantized_attention(module):
        return module
    if isinstance(module, nn.MultiheadAttention):
        return module  # its out_proj is called functionally: leave it float
    attention = quantized_attention(module, qcfg)  # the backbone adapters' attention swaps
    if attention is not None:
        return attention
    role = roles.get(id(module), 'activation')
    if isinstance(module, nn.Linear):
        return QuantLinear.from_float(module, qcfg.weight(), _input_quantizer(role, qcfg))
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return QuantConv2d.from_float(module, qcfg.weight(),
                                      _input_quantizer(role, qcfg, module.in_channels))
    return module


def _device_of(module: nn.Module):
    """The device of ``module``'s first parameter or buffer (``None`` if it has none)."""
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return None if tensor is None else tensor.device


def _swap_children(parent: nn.Module, roles: Dict[int, str], qcfg: QuantConfig) -> None:
    for name, child in list(parent.named_children()):
        new = _swap(child, roles, qcfg)
        if new is not child:
            new.train(child.training)  # new quantizers follow the module's train/eval mode
            device = _device_of(child)
            if device is not None:
                new.to(device)  # ... and its device (a model already on a GPU)
            setattr(parent, name, new)
        _swap_children(new, roles, qcfg)


def quantize_modules(model: nn.Module, qcfg: QuantConfig) -> nn.Module:
    """Swap every quantizable module of ``model`` (in place) and return it."""
    roles = input_roles(model)
    _swap_children(model, roles, qcfg)
    return model


def quantizers(model: nn.Module) -> Iterable[BaseQuantizer]:
    return (m for m in model.modules() if isinstance(m, BaseQuantizer))


def set_quant_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every quantizer of ``model`` on (quantized mode) or off (float mode)."""
    for q in quantizers(model):
        q.enabled = enabled


def count_quant_layers(model: nn.Module) -> Dict[str, int]:
    """How many layers of each quantized type ``model`` holds."""
    counts: Dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, QUANT_LAYERS):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts
