"""Quantized layers, the model transform, reparameterizations, quantized backbones and the
backbone adapters."""
from .backbones import QuantSwinTransformer, QuantTimmViTDet, TimmViTDet
from .quant_attention import QuantTimmAttention, QuantWindowMSA
from mmq.config.quant_config import QuantConfig
from .quant_conv import QuantConv2d
from .quant_linear import QuantLinear
from .quant_matmul import QuantMatMul
from .transform import count_quant_layers, quantize_modules, set_quant_enabled

__all__ = [
    'QuantSwinTransformer', 'QuantTimmViTDet', 'TimmViTDet', 'QuantTimmAttention',
    'QuantWindowMSA', 'QuantConfig', 'QuantConv2d', 'QuantLinear', 'QuantMatMul',
    'count_quant_layers', 'quantize_modules', 'set_quant_enabled'
]
