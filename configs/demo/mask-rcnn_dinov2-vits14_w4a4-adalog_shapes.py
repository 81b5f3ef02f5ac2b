# The real-backbone demo detector (DINOv2 ViT-S/14) quantized at W4A4 with AdaLog + FPCS.
# The committed detector checkpoint holds the backbone, so no converted weights are needed.
_base_ = ['./mask-rcnn_dinov2-vits14_fpn_shapes.py', '../_base_/quant/w4a4_adalog.py']
model = dict(backbone=dict(pretrained=None))
