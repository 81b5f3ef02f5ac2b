# The APHQ stages (MR, AdaLog + FPCS, APH-weighted block reconstruction; published schedule,
# 256 calibration images) with every activation of the blocks quantized per token in blocks
# of 16 features (beyond the published static scales): the post-LayerNorm, proj, q / k and
# fc2 inputs per token, v per channel column and the post-Softmax matrix per query row (in
# blocks of 16 tokens / keys), every other Linear / Conv2d input per token / pixel. The best
# W4A4 recipe measured on the dinov2 testbed: with the CPU reconstruction schedule of
# `configs/demo/mask-rcnn_dinov2-vits14_w4a4-aphq-tokens7-g16_shapes.py` it keeps 95 % / 98 %
# of float box AP over two seeds (README, `adalog-fpcs-tokens7-g16+mr+rec-long#n256`).
# Needs a kernel with per-block dynamic activation scales.
_base_ = ['./w4a4_aphq.py']
quant_cfg = dict(
    token_roles=['ln_input', 'proj_input', 'qk', 'post_gelu', 'other', 'v', 'post_softmax'],
    token_group_size=16)
