"""The maths of mmq: pure quantization functions, FPCS search, quantizer modules and
calibrators."""
from .adaround_quantizer import AdaRoundQuantizer
from .beam_search import BeamStep, SearchResult, beam_search, grid_search
from .calibrators import FPCSCalibrator, MinMaxCalibrator, PercentileCalibrator
from .fpcs import (LogSchedule, UniformSchedule, fpcs_log, fpcs_token, fpcs_uniform,
                   uniform_dense_grid)
from .log_quant import (ADALOG_Q_MAX, ADALOG_Q_MIN, ADALOG_R, GELU_SHIFT, adalog_bases,
                        fold_shift_into_bias, log_dequantize, log_fake_quant, log_quantize,
                        log_tables)
from .log_quantizer import AdaLogQuantizer, Log2Quantizer, LogQuantizer, LogSqrt2Quantizer
from .objectives import output_mse, self_mse
from .uniform import (minmax_params, percentile_params, uniform_dequantize, uniform_fake_quant,
                      uniform_quantize)
from .token_quantizer import TokenQuantizer, token_fake_quant
from .uniform_quantizer import UniformQuantizer

__all__ = [
    'BeamStep', 'SearchResult', 'beam_search', 'grid_search', 'FPCSCalibrator',
    'MinMaxCalibrator', 'PercentileCalibrator', 'LogSchedule', 'UniformSchedule', 'fpcs_log',
    'fpcs_uniform', 'uniform_dense_grid', 'ADALOG_Q_MAX', 'ADALOG_Q_MIN', 'ADALOG_R',
    'adalog_bases', 'GELU_SHIFT', 'fold_shift_into_bias', 'log_dequantize', 'log_fake_quant',
    'log_quantize', 'log_tables', 'AdaLogQuantizer', 'Log2Quantizer', 'LogQuantizer',
    'LogSqrt2Quantizer', 'output_mse', 'self_mse', 'minmax_params', 'percentile_params',
    'uniform_dequantize', 'uniform_fake_quant', 'uniform_quantize', 'UniformQuantizer',
    'AdaRoundQuantizer', 'TokenQuantizer', 'token_fake_quant', 'fpcs_token'
]
