"""timm's Vision Transformer, bare (a classifier) or inside ``mmq.TimmViTDet``."""
from typing import Dict, List, Optional

from timm.layers import Attention, HybridEmbed, Mlp
from timm.layers import PatchEmbed as TimmPatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from mmq.registry import BACKBONE_ADAPTERS
from ..backbones.vit_det import TimmViTDet
from ..quant_attention import QuantTimmAttention
from mmq.config.quant_config import QuantConfig
from .base import BackboneAdapter, MLPParts, Pair, State, Unit, activation_role


def vit_units(vit: VisionTransformer, head: bool = True) -> List[Unit]:
    """Patch embedding (+ position embedding), every block, and the classifier head."""

    def embed(state: State) -> State:
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(state[0]))))
        return (x, )

    units = [Unit('patch_embed', vit.patch_embed, embed)]
    for i, block in enumerate(vit.blocks):
        units.append(Unit(f'blocks.{i}', block, lambda s, b=block: (b(s[0]), )))
    if head:
        units.append(Unit('head', vit.head, lambda s: (vit.forward_head(vit.norm(s[0])), )))
    return units


def vitdet_units(backbone: TimmViTDet) -> List[Unit]:
    """The ViT's embedding and blocks, then the simple feature pyramid.

    State: ``(tokens, hw)``; the first unit takes ``(image,)``.
    """
    units = [Unit('vit.patch_embed', backbone.vit.patch_embed,
                  lambda s: backbone.embed(s[0]))]
    for i, block in enumerate(backbone.vit.blocks):
        units.append(Unit(f'vit.blocks.{i}', block,
                          lambda s, i=i: (backbone.run_block(i, s[0], s[1]), s[1])))
    units.append(Unit('pyramid', backbone.pyramid, lambda s: backbone.pyramid_forward(
        backbone.tokens_to_map(s[0], s[1]))))
    return units


def _mlp_parts(mlp: Mlp) -> MLPParts:
    return MLPParts(mlp, mlp.fc1, mlp.fc2, mlp.act, lambda a, m=mlp: setattr(m, 'act', a))


@BACKBONE_ADAPTERS.register_module()
class TimmViTAdapter(BackboneAdapter):
    """timm ``VisionTransformer`` and ``mmq.TimmViTDet`` (``mmq.QuantTimmViTDet``): units are
    the patch embedding, every block and the head (a classifier) or the simple pyramid (a
    detector backbone); timm ``Attention`` is quantized."""

    backbone_types = (TimmViTDet, VisionTransformer)

    def units(self, backbone: nn.Module) -> List[Unit]:
        if isinstance(backbone, TimmViTDet):
            return vitdet_units(backbone)
        return vit_units(backbone)

    def input_roles(self, module: nn.Module) -> Dict[int, str]:
        if isinstance(module, Attention):
            return {id(module.qkv): 'ln_input', id(module.proj): 'proj_input'}
        if isinstance(module, Mlp) and isinstance(module.norm, nn.Identity):
            roles = {id(module.fc1): 'ln_input'}
            if activation_role(module.act):
                roles[id(module.fc2)] = activation_role(module.act)
            return roles
        if isinstance(module, TimmPatchEmbed):
            return {id(module.proj): 'image'}
        if isinstance(module, HybridEmbed):  # a conv stem: its first conv sees the pixels
            first = next((m for m in module.backbone.modules() if isinstance(m, nn.Conv2d)),
                         module.proj)
            return {id(first): 'image'}
        return {}

    def quantized_attention(self, module: nn.Module, qcfg: QuantConfig) -> Optional[nn.Module]:
        return QuantTimmAttention.from_float(module, qcfg) if isinstance(
            module, Attention) else None

    def is_quantized_attention(self, module: nn.Module) -> bool:
        return isinstance(module, QuantTimmAttention)

    def layernorm_pairs(self, module: nn.Module) -> List[Pair]:
        if isinstance(module, Block):
            return [(module.norm1, module.attn.qkv, None), (module.norm2, module.mlp.fc1, None)]
        return []

    def mlp(self, module: nn.Module) -> Optional[MLPParts]:
        if isinstance(module, Mlp) and isinstance(module.norm, nn.Identity):
            return _mlp_parts(module)
        return None
