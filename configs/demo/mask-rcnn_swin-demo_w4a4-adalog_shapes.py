# The demo: the demo Swin Mask R-CNN quantized at W4A4 with AdaLog + FPCS (make demo).
_base_ = ['./mask-rcnn_swin-demo_fpn_shapes.py', '../_base_/quant/w4a4_adalog.py']
