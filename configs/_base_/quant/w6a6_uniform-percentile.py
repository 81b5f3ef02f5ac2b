_base_ = ['./quant_runtime.py']
quant_cfg = dict(
    w_bits=6, a_bits=6, softmax='uniform', gelu='uniform', calibrator='percentile',
    scope='backbone')
