# The demo ViT Mask R-CNN quantized at W4A4 with AdaLog + FPCS.
_base_ = ['./mask-rcnn_vit-demo_fpn_shapes.py', '../_base_/quant/w4a4_adalog.py']
