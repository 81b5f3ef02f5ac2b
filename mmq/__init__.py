"""mmq: post-training quantization of ViT / Swin detectors for MMDetection.

Importing ``mmq`` registers its quantizers, calibrators, models and hooks.
"""
from . import hooks, models, quantizers  # noqa: F401  (registers modules)
from .calibration import load_quantized_state, quantize, save_quantized_state
from .config import QuantConfig
from .registry import BACKBONE_ADAPTERS, CALIBRATORS, HOOKS, MODELS, QUANTIZERS
from .version import __version__

__all__ = [
    'BACKBONE_ADAPTERS', 'CALIBRATORS', 'HOOKS', 'MODELS', 'QUANTIZERS', 'QuantConfig', 'quantize',
    'load_quantized_state', 'save_quantized_state', '__version__'
]
