# The demo Swin Mask R-CNN with the APHQ stages (MR, AdaLog + FPCS, APH-weighted block
# reconstruction) on a short CPU schedule (published: 20,000 steps x 32 images per block).
_base_ = ['./mask-rcnn_swin-demo_fpn_shapes.py', '../_base_/quant/w4a4_aphq.py']
quant_cfg = dict(
    mr=dict(iters=300, batch=1024, rows=8192, lr=1e-3),
    reconstruct=dict(iters=300, batch=4, lr=4e-5, round_lr=1e-2))
