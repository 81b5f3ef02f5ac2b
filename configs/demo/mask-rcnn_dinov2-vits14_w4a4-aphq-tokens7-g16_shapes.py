# The dinov2 testbed's best W4A4 recipe, as the accuracy benchmark's
# `adalog-fpcs-tokens7-g16+mr+rec-long#n256` row runs it (a test keeps the two equal): the
# APHQ stages with every block activation per token in blocks of 16 features, MR from the
# least-squares fc2 fit, and a CPU reconstruction schedule (900 steps x 2 images per block at
# rounding lr 0.1 / 3, the product 30 that lets every h(V) settle; APH on 8 images) on the
# preset's 256 calibration images. About 100 minutes on one CPU thread.
_base_ = ['./mask-rcnn_dinov2-vits14_fpn_shapes.py', '../_base_/quant/w4a4_aphq_tokens7-g16.py']
model = dict(backbone=dict(pretrained=None))
quant_cfg = dict(
    mr=dict(iters=100, batch=512, rows=16384, lr=1e-4, aph_images=8),
    reconstruct=dict(iters=900, batch=2, lr=4e-5, round_lr=0.1 / 3, aph_images=8))
