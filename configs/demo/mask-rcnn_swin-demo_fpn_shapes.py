# The demo Swin Mask R-CNN: a 4-stage Swin (48-wide, 2 blocks per stage) trained from scratch
# on the generated shapes data on CPU. Quantize it with the *_w4a4-adalog* etc. configs beside.
_base_ = [
    '../_base_/models/demo_mask-rcnn_fpn.py', '../_base_/datasets/shapes_instance.py',
    '../_base_/schedules/demo_adamw.py'
]
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=48,
        depths=[2, 2, 2, 2],
        num_heads=[2, 4, 8, 16],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        drop_path_rate=0.0,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=False,
        init_cfg=None),
    neck=dict(in_channels=[48, 96, 192, 384]))
