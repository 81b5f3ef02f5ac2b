"""The embedded demo: the shapes generator's determinism, and the committed demo detectors
quantized at W4A4 through Runner.test() on a tiny generated split."""
import hashlib
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from pycocotools.coco import COCO

from mmq.data import generate_shapes_coco
from .conftest import FAST_QUANT

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMOS = dict(
    swin=('configs/demo/mask-rcnn_swin-demo_w4a4-adalog_shapes.py',
          'checkpoints/demo/mask-rcnn_swin-demo_shapes.pth'),
    vit=('configs/demo/mask-rcnn_vit-demo_w4a4-adalog_shapes.py',
         'checkpoints/demo/mask-rcnn_vit-demo_shapes.pth'))


def _sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_generator_is_deterministic_and_valid_coco(tmp_path):
    a = generate_shapes_coco(str(tmp_path / 'a'), num_train=5, num_val=3, seed=3)
    b = generate_shapes_coco(str(tmp_path / 'b'), num_train=5, num_val=3, seed=3)
    c = generate_shapes_coco(str(tmp_path / 'c'), num_train=5, num_val=3, seed=4)
    for split in ('train', 'val'):
        assert _sha(a[split]) == _sha(b[split])
        assert _sha(a[split]) != _sha(c[split])
        assert _sha(osp.join(tmp_path, 'a', split, '000001.png')) == _sha(
            osp.join(tmp_path, 'b', split, '000001.png'))
        coco = COCO(a[split])
        assert len(coco.getImgIds()) == (5 if split == 'train' else 3)
        anns = coco.loadAnns(coco.getAnnIds())
        assert anns and all(len(x['segmentation']) >= 1 and x['area'] > 0 for x in anns)
        assert {x['category_id'] for x in anns} <= {1, 2, 3, 4, 5}


def test_committed_checkpoints_match_their_sha256():
    sums = osp.join(ROOT, 'checkpoints/demo/SHA256SUMS')
    lines = [line.split() for line in open(sums) if line.strip()]
    assert {name for _, name in lines} == {osp.basename(c) for _, c in DEMOS.values()}
    for digest, name in lines:
        assert _sha(osp.join(ROOT, 'checkpoints/demo', name)) == digest


@pytest.mark.parametrize('name', sorted(DEMOS))
def test_demo_detector_quantizes_through_runner_test(name, tmp_path):
    config, checkpoint = DEMOS[name]
    data = str(tmp_path / 'data')
    generate_shapes_coco(data, num_train=4, num_val=3, seed=11)
    cfg = Config.fromfile(osp.join(ROOT, config))
    cfg.load_from = osp.join(ROOT, checkpoint)
    cfg.work_dir = str(tmp_path / 'work')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data + '/'
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    for ev in ('val_evaluator', 'test_evaluator'):
        cfg[ev].ann_file = osp.join(data, 'annotations/instances_val.json')
    cfg.quant_cfg = dict(cfg.quant_cfg, **FAST_QUANT)
    cfg.custom_hooks[0].num_images = 2
    cfg.log_level = 'WARNING'
    torch.manual_seed(0)
    metrics = Runner.from_cfg(cfg).test()
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP_50'):
        assert key in metrics
        assert 0.0 <= metrics[key] <= 1.0
    assert osp.isfile(osp.join(cfg.work_dir, 'quantized_state.pth'))
