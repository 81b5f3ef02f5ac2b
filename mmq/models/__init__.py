"""Quantized layers, the model transform, reparameterizations and quantized backbones."""
from .backbones import QuantSwinTransformer, QuantTimmViTDet, TimmViTDet
from .quant_attention import QuantTimmAttention, QuantWindowMSA
from .quant_config import QuantConfig
from .quant_conv import QuantConv2d
from .quant_linear import QuantLinear
from .quant_matmul import QuantMatMul
from .transform import count_quant_layers, quantize_modules, set_quant_enabled

__all__ = [
    'QuantSwinTransformer', 'QuantTimmViTDet', 'TimmViTDet', 'QuantTimmAttention',
    'QuantWindowMSA', 'QuantConfig', 'QuantConv2d', 'QuantLinear', 'QuantMatMul',
    'count_quant_layers', 'quantize_modules', 'set_quant_enabled'
]
