# The demo ViT Mask R-CNN: a timm ViT (192-wide, 6 blocks, patch 8) with a ViTDet simple
# pyramid, trained from scratch on the generated shapes data on CPU. (mmengine imports mmq
# itself for the `mmq.` type.)
_base_ = [
    '../_base_/models/demo_mask-rcnn_fpn.py', '../_base_/datasets/shapes_instance.py',
    '../_base_/schedules/demo_adamw.py'
]
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmq.TimmViTDet',
        img_size=128,
        patch_size=8,
        embed_dims=192,
        depth=6,
        num_heads=3,
        mlp_ratio=4.0,
        out_channels=64,
        scales=(2.0, 1.0, 0.5, 0.25),
        drop_path_rate=0.0),
    neck=dict(in_channels=[64, 64, 64, 64]))
