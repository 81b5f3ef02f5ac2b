"""A plain ViT backbone for mmdet: timm's ``VisionTransformer`` with a ViTDet-style simple
feature pyramid (strides 4, 8, 16, 32 from the stride-16 token map), optionally embedding
patches with a small convolutional stem (timm ``HybridEmbed``) instead of one strided conv,
optionally initialised from a pretrained timm state dict (e.g. DINOv2 ViT-S/14, see
``tools/convert_dinov2_onnx.py``)."""
import os.path as osp
from functools import partial
from typing import Optional, Sequence, Tuple

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from timm.layers import HybridEmbed, LayerNorm2d
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.nn import functional as F

from mmq.registry import MODELS


def conv_stem(channels: Sequence[int]) -> nn.Sequential:
    """Stride-2 3x3 conv + BatchNorm + ReLU per entry of ``channels`` (an "early convolutions"
    stem: total stride ``2 ** len(channels)``)."""
    layers, c_in = [], 3
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c),
                   nn.ReLU(inplace=True)]
        c_in = c
    return nn.Sequential(*layers)


def window_block(block: nn.Module, x: Tensor, hw: Tuple[int, int], window: int) -> Tensor:
    """Run a timm ``Block`` on non-overlapping ``window x window`` token windows (ViTDet's
    window attention; per-token parts are unchanged). ``x``: (B, H*W, C); the grid is
    zero-padded to whole windows and cropped back."""
    (h, w), (b, _, c) = hw, x.shape
    ph, pw = -h % window, -w % window
    x = F.pad(x.reshape(b, h, w, c), (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // window, window, wp // window, window, c).transpose(2, 3)
    x = block(x.reshape(-1, window * window, c))
    x = x.reshape(b, hp // window, wp // window, window, window, c).transpose(2, 3)
    return x.reshape(b, hp, wp, c)[:, :h, :w].reshape(b, h * w, c)


def _level(dims: int, scale: float, out_channels: int) -> nn.Sequential:
    if scale == 4.0:
        pre = [
            nn.ConvTranspose2d(dims, dims // 2, 2, 2),
            LayerNorm2d(dims // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dims // 2, dims // 4, 2, 2)
        ]
        dims = dims // 4
    elif scale == 2.0:
        pre, dims = [nn.ConvTranspose2d(dims, dims // 2, 2, 2)], dims // 2
    elif scale == 1.0:
        pre = []
    elif scale in (0.5, 0.25, 0.125):
        pre = [nn.MaxPool2d(int(1 / scale), int(1 / scale))]
    else:
        raise ValueError(f'scale={scale} must be one of 4.0, 2.0, 1.0, 0.5, 0.25, 0.125.')
    return nn.Sequential(*pre, nn.Conv2d(dims, out_channels, 1, bias=False),
                         LayerNorm2d(out_channels),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                         LayerNorm2d(out_channels))


@MODELS.register_module()
class TimmViTDet(BaseModule):
    """timm ViT + simple feature pyramid.

    Args:
        img_size (int): Size the position embedding is defined at (resampled to any input).
        patch_size (int): Patch size (the token map's stride).
        embed_dims (int): Token width.
        depth (int): Number of blocks.
        num_heads (int): Attention heads.
        mlp_ratio (float): MLP hidden width ratio.
        out_channels (int): Channels of every pyramid level.
        scales (Sequence[float]): Pyramid scales relative to the token map.
        init_values (float, optional): LayerScale init (``None``: no LayerScale).
        stem_channels (Sequence[int], optional): Widths of a convolutional stem
            (:func:`conv_stem`) that replaces the patch projection; its stride
            ``2 ** len(stem_channels)`` must equal ``patch_size``. ``None``: timm's strided
            patch conv.
        window_size (int): ViTDet-style window attention in every block not listed in
            ``global_blocks`` (``0``: global attention everywhere).
        global_blocks (Sequence[int]): Blocks that attend globally when windowed.
        drop_path_rate (float): Stochastic depth.
        class_token (bool): A class token (as DINOv2 has); it attends with the patch tokens
            and is dropped from the feature map. Not with window attention.
        feature_stride (int, optional): Stride of the token map relative to the input
            (``None``: ``patch_size``). When it differs from ``patch_size`` the input is
            resized by ``patch_size / feature_stride`` (bilinear) before the patch embedding,
            so that e.g. a patch-14 ViT gives a stride-16 map for mmdet's power-of-two
            pyramid (the resized pixels stay float, like the patch embedding's input).
        pretrained (str, optional): A timm ``VisionTransformer`` state dict (plain tensors,
            loaded with ``weights_only=True``) loaded strictly into ``self.vit`` by
            :meth:`init_weights`; its position grid is resampled to any input.
        frozen_blocks (int): Freeze the patch embedding and the first ``frozen_blocks``
            blocks (``depth``: the whole ViT including its final norm), kept in eval mode.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 img_size: int = 224,
                 patch_size: int = 16,
                 embed_dims: int = 384,
                 depth: int = 12,
                 num_heads: int = 6,
                 mlp_ratio: float = 4.0,
                 out_channels: int = 256,
                 scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 init_values: Optional[float] = None,
                 stem_channels: Optional[Sequence[int]] = None,
                 window_size: int = 0,
                 global_blocks: Sequence[int] = (),
                 drop_path_rate: float = 0.0,
                 class_token: bool = False,
                 feature_stride: Optional[int] = None,
                 pretrained: Optional[str] = None,
                 frozen_blocks: int = 0,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        if class_token and window_size:
            raise ValueError('class_token=True needs global attention (window_size=0): a '
                             'class token does not belong to any token window.')
        if not 0 <= frozen_blocks <= depth:
            raise ValueError(f'frozen_blocks={frozen_blocks} must be in [0, depth={depth}].')
        self.patch_size = patch_size
        self.feature_stride = feature_stride or patch_size
        self.pretrained = pretrained
        self.frozen_blocks = frozen_blocks
        self.window_size = window_size
        self.global_blocks = tuple(global_blocks)
        if any(not 0 <= i < depth for i in self.global_blocks):
            raise ValueError(f'global_blocks={self.global_blocks} must index the {depth} blocks.')
        embed = {}  # timm's strided patch conv unless a stem replaces it
        if stem_channels:
            if 2**len(stem_channels) != patch_size:
                raise ValueError(f'stem_channels={tuple(stem_channels)} gives stride '
                                 f'{2**len(stem_channels)}, but patch_size={patch_size}: use '
                                 f'{patch_size.bit_length() - 1} stem convs or patch_size='
                                 f'{2**len(stem_channels)}.')
            # The stem does the whole stride; the projection after it is 1x1.
            embed = dict(embed_layer=partial(HybridEmbed, backbone=conv_stem(stem_channels)))
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=1 if stem_channels else patch_size,
            embed_dim=embed_dims, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=0,
            global_pool='', class_token=class_token, dynamic_img_size=True,
            init_values=init_values, drop_path_rate=drop_path_rate, **embed)
        self.pyramid = nn.ModuleList(_level(embed_dims, s, out_channels) for s in scales)
        self._freeze()

    def init_weights(self) -> None:
        super().init_weights()
        if self.pretrained is None:
            return
        if not osp.isfile(self.pretrained):
            raise FileNotFoundError(
                f'pretrained ViT weights not found: {self.pretrained}. For DINOv2 ViT-S/14 run '
                f'`python tools/convert_dinov2_onnx.py {self.pretrained}` first.')
        state = torch.load(self.pretrained, map_location='cpu', weights_only=True)
        state = state.get('state_dict', state)
        try:
            self.vit.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f'{self.pretrained} does not fit this TimmViTDet\'s ViT (check '
                             f'embed_dims / depth / patch_size / class_token): {e}') from e
        MMLogger.get_current_instance().info(f'TimmViTDet: loaded {self.pretrained}')

    def _freeze(self) -> None:
        if not self.frozen_blocks:
            return
        vit = self.vit
        frozen = [vit.patch_embed, *vit.blocks[:self.frozen_blocks]]
        params = [p for m in frozen for p in m.parameters()]
        params += [p for p in (vit.cls_token, vit.pos_embed) if p is not None]
        if self.frozen_blocks == len(vit.blocks):
            frozen.append(vit.norm)
            params += list(vit.norm.parameters())
        for p in params:
            p.requires_grad = False
        self._frozen_modules = frozen

    def train(self, mode: bool = True) -> 'TimmViTDet':
        super().train(mode)
        for m in getattr(self, '_frozen_modules', ()):
            m.eval()
        return self

    def embed(self, img: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Tokens (with position embedding) and the token grid's (H, W)."""
        hw = (img.shape[-2] // self.feature_stride, img.shape[-1] // self.feature_stride)
        if self.feature_stride != self.patch_size:
            img = F.interpolate(img, size=(hw[0] * self.patch_size, hw[1] * self.patch_size),
                                mode='bilinear', align_corners=False)
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(img))))
        return x, hw

    def run_block(self, index: int, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """Block ``index`` on the tokens: windowed unless global (see ``window_size``)."""
        block = self.vit.blocks[index]
        if self.window_size and index not in self.global_blocks:
            return window_block(block, x, hw, self.window_size)
        return block(x)

    def tokens_to_map(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        x = self.vit.norm(x[:, self.vit.num_prefix_tokens:])
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)

    def pyramid_forward(self, fmap: Tensor) -> Tuple[Tensor, ...]:
        # timm's LayerNorm2d returns channels-last strides, which every later conv keeps, and
        # mmcv's CPU RoIAlign reads its input as contiguous NCHW: without .contiguous() the
        # RoI heads see scrambled features (the RPN, plain convs, does not).
        return tuple(level(fmap).contiguous() for level in self.pyramid)

    def forward(self, img: Tensor) -> Tuple[Tensor, ...]:
        if img.shape[-2] % self.feature_stride or img.shape[-1] % self.feature_stride:
            raise ValueError(f'input {tuple(img.shape[-2:])} is not divisible by the feature '
                             f'stride {self.feature_stride}: pad it (data_preprocessor '
                             'pad_size_divisor=32).')
        x, hw = self.embed(img)
        for i in range(len(self.vit.blocks)):
            x = self.run_block(i, x, hw)
        return self.pyramid_forward(self.tokens_to_map(x, hw))


__all__ = ['TimmViTDet']
