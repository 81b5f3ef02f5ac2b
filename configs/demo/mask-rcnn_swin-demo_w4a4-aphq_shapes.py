# The demo Swin Mask R-CNN with the APHQ stages (MR, AdaLog + FPCS, APH-weighted block
# reconstruction) on a short CPU schedule: published 20,000 steps x 32 images per block, here
# 50 x 2, and the APH importance averaged over 8 of the 32 calibration images.
_base_ = ['./mask-rcnn_swin-demo_fpn_shapes.py', '../_base_/quant/w4a4_aphq.py']
quant_cfg = dict(
    mr=dict(iters=100, batch=512, rows=4096, lr=1e-3, aph_images=8),
    reconstruct=dict(iters=50, batch=2, lr=4e-5, round_lr=1e-2, aph_images=8))
