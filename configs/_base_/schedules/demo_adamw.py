# From-scratch AdamW schedule for the CPU-trained demo detectors (epochs set per model).
_base_ = ['mmdet::_base_/default_runtime.py']
max_epochs = 6
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=2)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=8e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.),
    clip_grad=dict(max_norm=10.0, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=300),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs,
         eta_min_ratio=0.01, convert_to_iter_based=True)
]
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=1, max_keep_ckpts=2))
auto_scale_lr = dict(enable=False, base_batch_size=4)
