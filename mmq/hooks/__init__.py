"""Runner integration."""
from .quant_calibration_hook import QuantCalibrationHook

__all__ = ['QuantCalibrationHook']
