"""Backbone adapters (one file per backbone family) and the lookups that ask all of them."""
from typing import Dict, List, Optional, Tuple

from torch import nn

from mmq.registry import BACKBONE_ADAPTERS
from mmq.config.quant_config import QuantConfig
from .base import BackboneAdapter, MLPParts, Pair, State, Unit
from .swin import SwinAdapter
from .timm_vit import TimmViTAdapter

_instances: Dict[type, BackboneAdapter] = {}


def adapters() -> List[BackboneAdapter]:
    """One instance of every registered adapter."""
    for cls in BACKBONE_ADAPTERS.module_dict.values():
        if cls not in _instances:
            _instances[cls] = cls()
    return [_instances[cls] for cls in BACKBONE_ADAPTERS.module_dict.values()]


def supported_backbones() -> List[str]:
    return [t.__name__ for a in adapters() for t in a.backbone_types]


def build_units(backbone: nn.Module) -> List[Unit]:
    """The unit chain of a supported backbone; a clear error otherwise."""
    for adapter in adapters():
        if isinstance(backbone, adapter.backbone_types):
            return adapter.units(backbone)
    raise TypeError(f'unsupported backbone {type(backbone).__name__}: mmq calibrates '
                    f'{", ".join(supported_backbones())} (and their mmq.Quant* forms). Use one '
                    'of these in model.backbone, or register a BackboneAdapter for it '
                    '(mmq/models/adapters/).')


def input_roles(model: nn.Module) -> Dict[int, str]:
    """``id(layer) -> role`` for every layer of ``model`` whose input is special."""
    roles: Dict[int, str] = {}
    for module in model.modules():
        for adapter in adapters():
            roles.update(adapter.input_roles(module))
    return roles


def quantized_attention(module: nn.Module, qcfg: QuantConfig) -> Optional[nn.Module]:
    """The quantized replacement of a supported attention module, else ``None``."""
    for adapter in adapters():
        new = adapter.quantized_attention(module, qcfg)
        if new is not None:
            return new
    return None


def is_quantized_attention(module: nn.Module) -> bool:
    return any(adapter.is_quantized_attention(module) for adapter in adapters())


def attention_output_parts(module: nn.Module) -> Optional[Tuple[nn.Module, nn.Module]]:
    """``(qkv, proj)`` of a quantized attention whose output can be reparameterized (see
    :mod:`mmq.models.attention_output_reparam`), else ``None``."""
    from ..quant_attention import output_reparam_parts
    return output_reparam_parts(module)


def layernorm_pairs(module: nn.Module) -> List[Pair]:
    """(LayerNorm, quantized Linear, offset buffer) triples of one block whose LayerNorm has
    an affine transform to fold into."""
    from ..quant_linear import QuantLinear
    pairs = [p for adapter in adapters() for p in adapter.layernorm_pairs(module)]
    return [(ln, lin, off) for ln, lin, off in pairs
            if isinstance(ln, nn.LayerNorm) and ln.elementwise_affine
            and isinstance(lin, QuantLinear)]


def find_mlps(model: nn.Module) -> List[MLPParts]:
    """Every two-layer MLP of ``model`` that an adapter knows, in module order."""
    found = []
    for module in model.modules():
        for adapter in adapters():
            parts = adapter.mlp(module)
            if parts is not None:
                found.append(parts)
                break
    return found


__all__ = [
    'BackboneAdapter', 'MLPParts', 'Pair', 'State', 'Unit', 'SwinAdapter', 'TimmViTAdapter',
    'adapters', 'build_units', 'input_roles', 'quantized_attention', 'is_quantized_attention',
    'layernorm_pairs', 'attention_output_parts', 'find_mlps', 'supported_backbones'
]
