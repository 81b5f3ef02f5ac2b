"""Calibration: units (blocks), block-wise FPCS calibration, the activation store, and the
``quantize`` entry point."""
from .activation_store import ActivationStore
from .quantize import prepare, quantize
from .quantized_state import (load_partial_state, load_quantized_state, save_partial_state,
                              save_quantized_state)
from .units import Unit, build_units

__all__ = [
    'ActivationStore', 'prepare', 'quantize', 'load_partial_state', 'load_quantized_state',
    'save_partial_state', 'save_quantized_state',
    'Unit', 'build_units'
]
