# AdaLog + FPCS calibration, then error-compensated (GPTQ) weight rounding on the searched
# grids (beyond the published methods, which round to nearest; the dinov2 testbed's W4A4
# calibrate-only rows gain about 0.05 box AP from it at ~5 % more calibration time: README).
_base_ = ['./w4a4_adalog.py']
quant_cfg = dict(weight_rounding='gptq')
