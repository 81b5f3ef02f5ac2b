# mmdet's Mask R-CNN FPN, narrowed for the CPU-trained demo detectors (5 shape classes), with
# GroupNorm in the neck and the RoI heads as in mmdet's from-scratch recipe
# (mmdet::scratch/mask-rcnn_r50-scratch_fpn_gn-all_6x_coco.py): 4 conv + 1 fc box head.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']
channels = 64
norm_cfg = dict(type='GN', num_groups=16, requires_grad=True)
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    neck=dict(out_channels=channels, norm_cfg=norm_cfg),
    rpn_head=dict(in_channels=channels, feat_channels=channels),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels),
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', in_channels=channels,
                       conv_out_channels=channels, norm_cfg=norm_cfg, fc_out_channels=256,
                       num_classes=5),
        mask_roi_extractor=dict(out_channels=channels),
        mask_head=dict(num_convs=4, in_channels=channels, conv_out_channels=channels,
                       norm_cfg=norm_cfg, num_classes=5)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300), rcnn=dict(max_per_img=50)))
