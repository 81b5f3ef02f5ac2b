# The demo ViT Mask R-CNN: a timm ViT (192-wide, 6 blocks, stride-8 tokens from a 3-conv stem)
# with ViTDet window attention (4x4-token windows, blocks 2 and 5 global) and a simple
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
        stem_channels=(32, 64, 128),
        window_size=4,
        global_blocks=(2, 5),
        drop_path_rate=0.0),
    neck=dict(in_channels=[64, 64, 64, 64]))

# 3 epochs (2250 iterations; its steps are slower than the Swin's): what the session that
# found the RoIAlign stride bug had left (see checkpoints/demo/README.md).
max_epochs = 3
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=300),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs,
         eta_min_ratio=0.01, convert_to_iter_based=True)
]
