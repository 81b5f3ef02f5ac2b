"""mmq: post-training quantization of ViT / Swin detectors for MMDetection.

Importing ``mmq`` registers its quantizers, calibrators, models and hooks.
"""
from . import hooks, quantizers  # noqa: F401  (registers modules)
from .registry import CALIBRATORS, HOOKS, MODELS, QUANTIZERS
from .version import __version__

__all__ = ['CALIBRATORS', 'HOOKS', 'MODELS', 'QUANTIZERS', '__version__']
