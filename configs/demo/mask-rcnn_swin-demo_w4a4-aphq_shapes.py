# The demo Swin Mask R-CNN with the APHQ stages (MR, AdaLog + FPCS, APH-weighted block
# reconstruction) on a short CPU schedule: published 20,000 steps x 32 images per block at
# rounding lr 1e-3, here 300 x 2 at 0.1 (a rounding variable moves at most about lr per Adam
# step, so the product, 30, is what lets every h(V) settle at 0 or 1 before hardening), and
# the APH importance averaged over 8 of the 32 calibration images (the preset's published
# 256 are for a GPU); MR keeps the preset's least-squares start and 100 steps.
_base_ = ['./mask-rcnn_swin-demo_fpn_shapes.py', '../_base_/quant/w4a4_aphq.py']
quant_cfg = dict(
    mr=dict(aph_images=8),
    reconstruct=dict(iters=300, batch=2, lr=4e-5, round_lr=0.1, aph_images=8))
custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=32, seed=0)]
