# 500-iteration pilot of the demo ViT recipe (full warm-up + cosine in 500 iterations, one
# validation at the end): how the ViT's attention layout and lr were chosen
# (checkpoints/demo/README.md). This one: the committed recipe, global attention, lr 8e-4.
#   OMP_NUM_THREADS=2 python tools/train.py configs/demo/pilots/vit-demo_pilot-500it_global.py
_base_ = ['../mask-rcnn_vit-demo_fpn_shapes.py']
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=500, val_interval=500)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=500, T_max=500,
         eta_min_ratio=0.01)
]
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=500, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
