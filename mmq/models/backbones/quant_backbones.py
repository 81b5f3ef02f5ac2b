"""Backbones that are quantized from construction, so a config can name them directly::

    model = dict(backbone=dict(type='mmq.QuantSwinTransformer', quant_cfg=dict(w_bits=4,
                 a_bits=4), ...))

Parameter names are the float backbones', so float checkpoints load unchanged; quantizers
pass values through until the calibration hook (or :func:`mmq.quantize`) calibrates them.
"""
from typing import Optional

from mmdet.models.backbones import SwinTransformer

from mmq.config.quant_config import QuantConfig
from mmq.models.transform import quantize_modules
from mmq.registry import MODELS
from .vit_det import TimmViTDet


def quantize_on_build(backbone, quant_cfg: Optional[dict]) -> None:
    """Keep the QuantConfig on the backbone and swap its modules."""
    backbone.quant_cfg = QuantConfig.from_dict(quant_cfg)
    quantize_modules(backbone, backbone.quant_cfg)


@MODELS.register_module()
class QuantSwinTransformer(SwinTransformer):
    """mmdet ``SwinTransformer`` with quantized Linear / Conv / attention matmuls.

    Args:
        quant_cfg (dict, optional): :class:`mmq.models.QuantConfig` fields.
        **kwargs: ``SwinTransformer`` arguments.
    """

    def __init__(self, quant_cfg: Optional[dict] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        quantize_on_build(self, quant_cfg)


@MODELS.register_module()
class QuantTimmViTDet(TimmViTDet):
    """:class:`TimmViTDet` with quantized Linear / Conv / attention matmuls.

    Args:
        quant_cfg (dict, optional): :class:`mmq.models.QuantConfig` fields.
        **kwargs: ``TimmViTDet`` arguments.
    """

    def __init__(self, quant_cfg: Optional[dict] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        quantize_on_build(self, quant_cfg)
