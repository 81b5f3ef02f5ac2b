# The demo ViT Mask R-CNN: a timm ViT (192-wide, 6 blocks of global attention over stride-8
# tokens from a 3-conv stem) with a ViTDet simple pyramid, trained from scratch on the
# generated shapes data on CPU. (mmengine imports mmq
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
        stem_channels=(32, 64, 128),
        drop_path_rate=0.0),
    neck=dict(in_channels=[64, 64, 64, 64]))

# 6 epochs (4500 iterations), validated every 2 (the schedule's default), like the Swin. Window
# attention (4x4 windows, blocks 2 and 5 global) learned slower in a 500-iteration pilot (0.044
# vs 0.080 box AP), as did lr 1.6e-3 (0.054); see checkpoints/demo/README.md.
max_epochs = 6
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=300),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs,
         eta_min_ratio=0.01, convert_to_iter_based=True)
]
