_base_ = ['mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py',
          '../_base_/quant/w4a4_uniform-percentile.py']
