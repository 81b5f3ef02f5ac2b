"""Backbones as chains of calibration units (blocks).

A unit is a module whose quantized layers are calibrated together, and a function that maps
the unit's input state to the next unit's input state. Chaining the units lets calibration
push each block's inputs through once and hand the quantized outputs to the next block,
instead of re-running the whole model for every layer.
"""
from dataclasses import dataclass
from typing import Callable, List

import torch
from mmdet.models.backbones import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from mmq.models.backbones.vit_det import TimmViTDet

State = tuple


def is_detector(model: nn.Module) -> bool:
    """An mmdet detector (a backbone and a data preprocessor), as opposed to a bare backbone
    or classifier."""
    return hasattr(model, 'backbone') and hasattr(model, 'data_preprocessor')


def first_tensor(state) -> Tensor:
    """The first tensor of a unit state (or a module output); a tensor is its own."""
    return state if torch.is_tensor(state) else next(x for x in state if torch.is_tensor(x))


@dataclass
class Unit:
    name: str
    module: nn.Module
    run: Callable[[State], State]


def swin_units(backbone: SwinTransformer) -> List[Unit]:
    """Patch embedding, every Swin block and every PatchMerging, in order.

    State: ``(tokens, hw_shape)``; the first unit takes ``(image,)``.
    """

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


def vit_units(vit: VisionTransformer, head: bool = True) -> List[Unit]:
    """Patch embedding (+ position embedding), every block, and the classifier head."""

    def embed(state: State) -> State:
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(state[0]))))
        return (x, )

    units = [Unit('patch_embed', vit.patch_embed, embed)]
    for i, block in enumerate(vit.blocks):
        units.append(Unit(f'blocks.{i}', block, lambda s, b=block: (b(s[0]), )))
    if head:
        units.append(Unit('head', vit.head,
                          lambda s: (vit.forward_head(vit.norm(s[0])), )))
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


def build_units(backbone: nn.Module) -> List[Unit]:
    """The unit chain of a supported backbone; a clear error otherwise."""
    if isinstance(backbone, SwinTransformer):
        return swin_units(backbone)
    if isinstance(backbone, TimmViTDet):
        return vitdet_units(backbone)
    if isinstance(backbone, VisionTransformer):
        return vit_units(backbone)
    raise TypeError(f'unsupported backbone {type(backbone).__name__}: mmq calibrates mmdet '
                    'SwinTransformer (or mmq.QuantSwinTransformer), mmq.TimmViTDet / '
                    'mmq.QuantTimmViTDet and timm VisionTransformer. Use one of these in '
                    'model.backbone.')
