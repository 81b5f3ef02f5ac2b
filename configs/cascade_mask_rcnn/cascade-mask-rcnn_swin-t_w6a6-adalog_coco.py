_base_ = ['./cascade-mask-rcnn_swin-t-p4-w7_fpn_giou_4conv1f_ms-crop-3x_coco.py',
          '../_base_/quant/w6a6_adalog.py']
