_base_ = ['./quant_runtime.py']
quant_cfg = dict(
    w_bits=4, a_bits=4, softmax='uniform', gelu='uniform', calibrator='percentile',
    scope='backbone')
