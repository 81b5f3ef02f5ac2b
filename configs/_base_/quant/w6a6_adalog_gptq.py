# AdaLog + FPCS calibration, then error-compensated (GPTQ) weight rounding on the searched
# grids (beyond the published methods, which round to nearest). At W6A6 the 6-bit weights
# cost more than the 6-bit activations on the dinov2 testbed, and GPTQ wins most of that back
# without training (README, `adalog-fpcs-gptq` W6A6 rows over three seeds).
_base_ = ['./w6a6_adalog.py']
quant_cfg = dict(weight_rounding='gptq')
