"""mmdet's Swin Transformer (and mmcv's transformer bricks it is built from)."""
from typing import Dict, List, Optional

from mmcv.cnn.bricks.transformer import FFN
from mmcv.cnn.bricks.transformer import PatchEmbed as MMCVPatchEmbed
from mmcv.cnn.bricks.transformer import PatchMerging as MMCVPatchMerging
from mmdet.models.backbones import SwinTransformer
from mmdet.models.layers import PatchEmbed as MMDetPatchEmbed
from mmdet.models.layers import PatchMerging as MMDetPatchMerging
from mmdet.models.backbones.swin import ShiftWindowMSA, SwinBlock, WindowMSA
from torch import nn

from mmq.registry import BACKBONE_ADAPTERS
from ..quant_attention import QuantShiftWindowMSA, QuantWindowMSA
from mmq.config.quant_config import QuantConfig
from .base import BackboneAdapter, MLPParts, Pair, State, Unit, activation_role

# mmdet's SwinTransformer builds mmdet's own copies of these (not subclasses of mmcv's);
# other OpenMMLab backbones build mmcv's.
PatchEmbed = (MMDetPatchEmbed, MMCVPatchEmbed)
PatchMerging = (MMDetPatchMerging, MMCVPatchMerging)


def ffn_parts(ffn: FFN) -> Optional[MLPParts]:
    """An mmcv ``FFN`` with two fully connected layers, ``layers = [Sequential(fc1, act,
    Dropout), fc2, Dropout]``, as an MLP (the one parse of its layout in mmq)."""
    layers = list(ffn.layers)
    if (len(layers) == 3 and isinstance(layers[0], nn.Sequential) and len(layers[0]) >= 2
            and isinstance(layers[0][0], nn.Linear) and isinstance(layers[1], nn.Linear)):
        seq = layers[0]
        return MLPParts(ffn, seq[0], layers[1], seq[1], lambda a, s=seq: s.__setitem__(1, a))
    return None


@BACKBONE_ADAPTERS.register_module()
class SwinAdapter(BackboneAdapter):
    """mmdet ``SwinTransformer`` (``mmq.QuantSwinTransformer``): units are the patch
    embedding, every block and every patch merging; window attention is quantized."""

    backbone_types = (SwinTransformer, )

    def units(self, backbone: SwinTransformer) -> List[Unit]:
        """State: ``(tokens, hw_shape)``; the first unit takes ``(image,)``."""

        def embed(state: State) -> State:
            x, hw_shape = backbone.patch_embed(state[0])
            if backbone.use_abs_pos_embed:
                x = x + backbone.absolute_pos_embed
            return backbone.drop_after_pos(x), hw_shape

        units = [Unit('patch_embed', backbone.patch_embed, embed)]
        for i, stage in enumerate(backbone.stages):
            for j, block in enumerate(stage.blocks):
                units.append(Unit(f'stages.{i}.blocks.{j}', block,
                                  lambda s, b=block: (b(s[0], s[1]), s[1])))
            if stage.downsample is not None:
                units.append(Unit(f'stages.{i}.downsample', stage.downsample,
                                  lambda s, d=stage.downsample: d(s[0], s[1])))
        return units

    def input_roles(self, module: nn.Module) -> Dict[int, str]:
        if isinstance(module, WindowMSA):
            return {id(module.qkv): 'ln_input', id(module.proj): 'proj_input'}
        if isinstance(module, PatchMerging):
            return {id(module.reduction): 'ln_input'}
        if isinstance(module, PatchEmbed):
            return {id(module.projection): 'image'}
        if isinstance(module, FFN):
            parts = ffn_parts(module)
            if parts is None:  # another layout: only its first Linear is known to follow a norm
                first = module.layers[0] if len(module.layers) else None
                if isinstance(first, nn.Sequential) and isinstance(first[0], nn.Linear):
                    return {id(first[0]): 'ln_input'}
                return {}
            roles = {id(parts.fc1): 'ln_input'}
            if activation_role(parts.act):
                roles[id(parts.fc2)] = activation_role(parts.act)
            return roles
        return {}

    def quantized_attention(self, module: nn.Module, qcfg: QuantConfig) -> Optional[nn.Module]:
        if isinstance(module, WindowMSA):
            return QuantWindowMSA.from_float(module, qcfg)
        if isinstance(module, ShiftWindowMSA):
            return QuantShiftWindowMSA.from_float(module, qcfg)
        return None

    def is_quantized_attention(self, module: nn.Module) -> bool:
        return isinstance(module, (QuantWindowMSA, QuantShiftWindowMSA))

    def layernorm_pairs(self, module: nn.Module) -> List[Pair]:
        """Swin's window attention zero-pads its (normalised) input: its offset buffer keeps
        the padding equal to the float model's after reparameterization."""
        if isinstance(module, SwinBlock):
            parts = ffn_parts(module.ffn)
            pairs = [(module.norm1, module.attn.w_msa.qkv,
                      getattr(module.attn.w_msa, 'pad_offset', None))]
            return pairs + ([(module.norm2, parts.fc1, None)] if parts else [])
        if isinstance(module, PatchMerging):
            return [(module.norm, module.reduction, None)]
        return []

    def mlp(self, module: nn.Module) -> Optional[MLPParts]:
        return ffn_parts(module) if isinstance(module, FFN) else None
