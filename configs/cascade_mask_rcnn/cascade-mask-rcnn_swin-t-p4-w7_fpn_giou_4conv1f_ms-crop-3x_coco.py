# Cascade Mask R-CNN Swin-T, 3x multi-scale-crop schedule, GIoU loss and 4conv1fc box heads:
# the model of the Swin Transformer object-detection repository's published checkpoint
# (convert it with tools/convert_swin_det_checkpoint.py). mmdet ships no Swin cascade config.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']


bbox_head_4conv1fc = dict(
    type='Shared4Conv1FCBBoxHead',
    in_channels=256,
    conv_out_channels=256,
    fc_out_channels=1024,
    roi_feat_size=7,
    num_classes=80,
    norm_cfg=dict(type='SyncBN', requires_grad=True),
    bbox_coder=dict(
        type='DeltaXYWHBBoxCoder',
        target_means=[0., 0., 0., 0.],
        target_stds=[0.1, 0.1, 0.2, 0.2]),
    reg_class_agnostic=False,
    reg_decoded_bbox=True,
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
rcnn_train = dict(
    assigner=dict(
        type='MaxIoUAssigner',
        pos_iou_thr=0.5,
        neg_iou_thr=0.5,
        min_pos_iou=0.5,
        match_low_quality=False,
        ignore_iof_thr=-1),
    sampler=dict(
        type='RandomSampler', num=512, pos_fraction=0.25, neg_pos_ub=-1,
        add_gt_as_proposals=True),
    mask_size=28,
    pos_weight=-1,
    debug=False)


model = dict(
    type='CascadeRCNN',
    roi_head=dict(
        _delete_=True,
        type='CascadeRoIHead',
        num_stages=3,
        stage_loss_weights=[1, 0.5, 0.25],
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        bbox_head=[
            bbox_head_4conv1fc,
            dict(bbox_head_4conv1fc, bbox_coder=dict(
                bbox_head_4conv1fc['bbox_coder'], target_stds=[0.05, 0.05, 0.1, 0.1])),
            dict(bbox_head_4conv1fc, bbox_coder=dict(
                bbox_head_4conv1fc['bbox_coder'], target_stds=[0.033, 0.033, 0.067, 0.067])),
        ],
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            num_classes=80,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    train_cfg=dict(
        rpn_proposal=dict(max_per_img=2000),
        rcnn=[
            rcnn_train,
            dict(rcnn_train, assigner=dict(rcnn_train['assigner'], pos_iou_thr=0.6,
                                           neg_iou_thr=0.6, min_pos_iou=0.6)),
            dict(rcnn_train, assigner=dict(rcnn_train['assigner'], pos_iou_thr=0.7,
                                           neg_iou_thr=0.7, min_pos_iou=0.7)),
        ]))
