# 500-iteration pilot: global attention with twice the lr (1.6e-3).
_base_ = ['./vit-demo_pilot-500it_global.py']
optim_wrapper = dict(optimizer=dict(lr=1.6e-3))
