# 500-iteration pilot: ViTDet window attention (4x4-token windows, blocks 2 and 5 global).
_base_ = ['./vit-demo_pilot-500it_global.py']
model = dict(backbone=dict(window_size=4, global_blocks=(2, 5)))
