"""Shared fixtures: a generated COCO-format dataset and a small-input stock Swin config."""
import os.path as osp

import pytest
from mmengine.config import Config

from mmq.data import CATEGORIES, generate_shapes_coco
from mmq.config.detector_config import load_config

STOCK_SWIN = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
# A reduced FPCS schedule keeps the suite in the CI budget; the published one is the default.
FAST_QUANT = dict(
    w_bits=4,
    a_bits=4,
    search_rows=64,
    search_windows=4,
    rounds=1,
    uniform_schedule=dict(num_candidates=32, width=4, steps=3),
    log_schedule=dict(keep_bases=4, num_scales=8, width=8, steps=2))


def tiny_vit(img_size: int, patch_size: int, embed_dim: int, depth: int, num_classes: int,
             seed: int = 0, **kwargs):
    """A seeded timm ViT classifier (no class token, average pooling) in eval mode."""
    from timm.models.vision_transformer import VisionTransformer
    import torch
    torch.manual_seed(seed)
    return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim,
                             depth=depth, num_heads=2, num_classes=num_classes,
                             class_token=False, global_pool='avg', **kwargs).eval()


@pytest.fixture(scope='session')
def shapes_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    generate_shapes_coco(root, num_train=6, num_val=3, height=160, width=224, seed=0)
    return root


def _set_num_classes(node, n: int) -> None:
    """Every multi-class head's ``num_classes`` (and Mask2Former's ``num_things_classes``) set
    to ``n``; class-agnostic ones (an RPN's ``num_classes=1``) are left alone."""
    if isinstance(node, dict):
        for key, value in node.items():
            if (key in ('num_classes', 'num_things_classes') and isinstance(value, int)
                    and value > 1):
                node[key] = n
            else:
                _set_num_classes(value, n)
    elif isinstance(node, list):
        for value in node:
            _set_num_classes(value, n)


def stock_config(config: str, data_root: str, work_dir: str, quant_cfg: dict,
                 size=(224, 160)) -> Config:
    """A stock mmdet config (any detector family), pointed at generated data, small test
    size, random weights, with the mmq calibration hook."""
    cfg = load_config(config)
    classes = tuple(CATEGORIES)
    cfg.model.backbone.init_cfg = None
    _set_num_classes(cfg.model, len(classes))
    for loader, split in (('train_dataloader', 'train'), ('val_dataloader', 'val'),
                          ('test_dataloader', 'val')):
        ds = cfg[loader].dataset
        while 'dataset' in ds and 'pipeline' not in ds:
            ds = ds.dataset  # RepeatDataset & co.
        ds.data_root = data_root
        ds.ann_file = f'annotations/instances_{split}.json'
        ds.data_prefix = dict(img=f'{split}/')
        ds.metainfo = dict(classes=classes)
        for t in ds.pipeline:
            if t['type'] == 'Resize':
                t['scale'] = size
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
        cfg[loader].batch_size = 1
    cfg.train_dataloader.dataset.filter_cfg = dict(filter_empty_gt=True, min_size=1)
    for ev in ('val_evaluator', 'test_evaluator'):
        evaluators = cfg[ev] if isinstance(cfg[ev], list) else [cfg[ev]]
        for e in evaluators:
            e.ann_file = osp.join(data_root, 'annotations/instances_val.json')
    cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline
    cfg.work_dir = work_dir
    cfg.custom_imports = dict(imports=['mmq'], allow_failed_imports=False)
    cfg.quant_cfg = quant_cfg
    cfg.custom_hooks = [
        dict(type='mmq.QuantCalibrationHook', num_images=2, require_checkpoint=False)
    ]
    cfg.default_hooks.logger.interval = 1
    cfg.log_level = 'WARNING'
    return cfg


def swin_config(data_root: str, work_dir: str, quant_cfg: dict, tmp_path) -> Config:
    """The stock Swin-T Mask R-CNN config, pointed at generated data, small test size."""
    cfg = stock_config(STOCK_SWIN, data_root, work_dir, quant_cfg)
    cfg.model.test_cfg.rpn.nms_pre = 300
    cfg.model.test_cfg.rpn.max_per_img = 100
    cfg.model.test_cfg.rcnn.score_thr = 0.0
    return cfg
