# The published per-layer search schedule: 3 rounds of [weights, activations] output-MSE FPCS
# (slower than the default single round).
_base_ = ['./w4a4_adalog.py']
quant_cfg = dict(rounds=3)
