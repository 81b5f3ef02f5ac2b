# The demo ViT Mask R-CNN: a timm ViT (192-wide, 6 blocks, patch 16) with a ViTDet simple
# pyramid, trained from scratch on the generated shapes data on CPU.
_base_ = [
    '../_base_/models/demo_mask-rcnn_fpn.py', '../_base_/datasets/shapes_instance.py',
    '../_base_/schedules/demo_adamw.py'
]
custom_imports = dict(imports=['mmq'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmq.TimmViTDet',
        img_size=256,
        patch_size=16,
        embed_dims=192,
        depth=6,
        num_heads=3,
        mlp_ratio=4.0,
        out_channels=64,
        scales=(4.0, 2.0, 1.0, 0.5),
        drop_path_rate=0.0),
    neck=dict(in_channels=[64, 64, 64, 64]))
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs,
         eta_min_ratio=0.01, convert_to_iter_based=True)
]
