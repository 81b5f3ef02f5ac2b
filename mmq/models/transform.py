"""The model transform: swap float modules for quantized ones by type, in eager mode.

Placement (``methods.md`` 1-4): weights per output channel; Linear / Conv inputs per tensor;
q, k and v per head; the post-Softmax matrix by ``qcfg.softmax`` (AdaLog by default); the
post-GELU fc2 input by ``qcfg.gelu`` (shifted AdaLog by default); a post-ReLU fc2 input (after
MR) uniform with zero point 0; the patch-embedding input (the first conv of a conv stem)
stays float; ConvTranspose2d, LayerNorm, Softmax and GELU stay float.
"""
from typing import Dict, Iterable

from mmcv.cnn.bricks.transformer import FFN, PatchEmbed, PatchMerging
from mmdet.models.backbones.swin import ShiftWindowMSA, WindowMSA
from timm.layers import Attention, HybridEmbed, Mlp
from timm.layers import PatchEmbed as TimmPatchEmbed
from torch import nn

from mmq.quantizers.base_quantizer import BaseQuantizer
from .quant_attention import QuantShiftWindowMSA, QuantTimmAttention, QuantWindowMSA
from .quant_config import QuantConfig
from .quant_conv import QuantConv2d
from .quant_linear import QuantLinear
from .quant_matmul import QuantMatMul

QUANT_LAYERS = (QuantLinear, QuantConv2d, QuantMatMul)


def _input_roles(model: nn.Module) -> Dict[int, str]:
    """Which layers' inputs are special, found from the types around them."""
    roles: Dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, (Attention, WindowMSA)):
            roles[id(module.qkv)] = 'ln_input'
            roles[id(module.proj)] = 'proj_input'
        elif isinstance(module, PatchMerging):
            roles[id(module.reduction)] = 'ln_input'
        if isinstance(module, FFN):
            first = module.layers[0] if len(module.layers) else None
            if isinstance(first, nn.Sequential) and isinstance(first[0], nn.Linear):
                roles[id(first[0])] = 'ln_input'
            # layers = [Sequential(fc1, act, Dropout), ..., fc_last, Dropout]: a Linear that
            # follows a Sequential ending in (GELU, Dropout) takes post-GELU input.
            act = None
            for layer in module.layers:
                if isinstance(layer, nn.Sequential) and len(layer) >= 2:
                    act = layer[-2]
                elif isinstance(layer, nn.Linear) and isinstance(act, (nn.GELU, nn.ReLU)):
                    roles[id(layer)] = 'gelu' if isinstance(act, nn.GELU) else 'relu'
        elif isinstance(module, Mlp) and isinstance(module.norm, nn.Identity):
            roles[id(module.fc1)] = 'ln_input'
            if isinstance(module.act, (nn.GELU, nn.ReLU)):
                roles[id(module.fc2)] = 'gelu' if isinstance(module.act, nn.GELU) else 'relu'
        elif isinstance(module, PatchEmbed):
            roles[id(module.projection)] = 'image'
        elif isinstance(module, TimmPatchEmbed):
            roles[id(module.proj)] = 'image'
        elif isinstance(module, HybridEmbed):  # a conv stem: its first conv sees the pixels
            first = next((m for m in module.backbone.modules() if isinstance(m, nn.Conv2d)),
                         module.proj)
            roles[id(first)] = 'image'
    return roles


def _input_quantizer(role: str, qcfg: QuantConfig):
    if role == 'image':
        return None  # the patch-embedding input (pixels) stays float
    if role == 'gelu':
        return qcfg.post_gelu()
    if role == 'relu':
        return qcfg.post_relu()
    return qcfg.activation(role=role if role in ('ln_input', 'proj_input') else 'other')


def _swap(module: nn.Module, roles: Dict[int, str], qcfg: QuantConfig) -> nn.Module:
    if isinstance(module, QUANT_LAYERS + (QuantWindowMSA, QuantShiftWindowMSA,
                                          QuantTimmAttention)):
        return module
    if isinstance(module, nn.MultiheadAttention):
        return module  # its out_proj is called functionally: leave it float
    if isinstance(module, WindowMSA):
        return QuantWindowMSA.from_float(module, qcfg)
    if isinstance(module, ShiftWindowMSA):
        return QuantShiftWindowMSA.from_float(module, qcfg)
    if isinstance(module, Attention):
        return QuantTimmAttention.from_float(module, qcfg)
    role = roles.get(id(module), 'activation')
    if isinstance(module, nn.Linear):
        return QuantLinear.from_float(module, qcfg.weight(), _input_quantizer(role, qcfg))
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return QuantConv2d.from_float(module, qcfg.weight(), _input_quantizer(role, qcfg))
    return module


def _swap_children(parent: nn.Module, roles: Dict[int, str], qcfg: QuantConfig) -> None:
    for name, child in list(parent.named_children()):
        new = _swap(child, roles, qcfg)
        if new is not child:
            new.train(child.training)  # new quantizers follow the module's train/eval mode
            setattr(parent, name, new)
        _swap_children(new, roles, qcfg)


def quantize_modules(model: nn.Module, qcfg: QuantConfig) -> nn.Module:
    """Swap every quantizable module of ``model`` (in place) and return it."""
    roles = _input_roles(model)
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
