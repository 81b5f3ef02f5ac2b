_base_ = ['./quant_runtime.py']
quant_cfg = dict(
    w_bits=3, a_bits=3, softmax='uniform', gelu='uniform', calibrator='percentile',
    scope='backbone')
