from .quant_backbones import QuantSwinTransformer, QuantTimmViTDet
from .vit_det import TimmViTDet

__all__ = ['QuantSwinTransformer', 'QuantTimmViTDet', 'TimmViTDet']
