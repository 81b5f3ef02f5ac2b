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


DINOV2 = ('configs/demo/mask-rcnn_dinov2-vits14_fpn_shapes.py',
          'checkpoints/demo/mask-rcnn_dinov2-vits14_shapes.pth')


def test_committed_checkpoints_match_their_sha256():
    sums = osp.join(ROOT, 'checkpoints/demo/SHA256SUMS')
    lines = [line.split() for line in open(sums) if line.strip()]
    assert {name for _, name in lines} == {
        osp.basename(c) for _, c in list(DEMOS.values()) + [DINOV2]}
    for digest, name in lines:
        assert _sha(osp.join(ROOT, 'checkpoints/demo', name)) == digest


def _on_split(config: str, data: str, work_dir: str) -> Config:
    """``config`` pointed at the generated split ``data`` (no worker processes)."""
    cfg = Config.fromfile(config)
    cfg.work_dir = work_dir
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data + '/'
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    for ev in ('val_evaluator', 'test_evaluator'):
        cfg[ev].ann_file = osp.join(data, 'annotations/instances_val.json')
    return cfg


def _run(name, data, work_dir, quant_cfg=None, num_images=4):
    """Runner.test() of demo detector ``name`` on the generated split ``data``: float when
    ``quant_cfg`` is None, else quantized through the calibration hook."""
    config, checkpoint = DEMOS[name]
    cfg = _on_split(osp.join(ROOT, config), data, work_dir)
    cfg.load_from = osp.join(ROOT, checkpoint)
    if quant_cfg is None:
        cfg.custom_hooks = []
    else:
        cfg.quant_cfg = dict(cfg.quant_cfg, **quant_cfg)
        cfg.custom_hooks[0].num_images = num_images
    cfg.log_level = 'WARNING'
    torch.manual_seed(0)
    return Runner.from_cfg(cfg).test()


@pytest.fixture(scope='module')
def demo_split(tmp_path_factory):
    """A fixed generated split: 8 train images (calibration), 24 val images (evaluation)."""
    data = str(tmp_path_factory.mktemp('demo_split'))
    generate_shapes_coco(data, num_train=8, num_val=24, seed=11)
    return data


@pytest.mark.parametrize('name', sorted(DEMOS))
def test_demo_detector_keeps_its_accuracy_at_w4a4(name, demo_split, tmp_path):
    """W4A4 AdaLog + FPCS (reduced CI schedule, 4 calibration images) through Runner.test()
    keeps >= 90 % of the float box and mask AP on the same 24 images."""
    fp = _run(name, demo_split, str(tmp_path / 'float'))
    q = _run(name, demo_split, str(tmp_path / 'w4a4'), FAST_QUANT)
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert fp[key] > 0.3, fp  # the committed detector works on this split
        assert q[key] >= 0.9 * fp[key], (key, fp[key], q[key])
    assert osp.isfile(osp.join(str(tmp_path / 'w4a4'), 'quantized_state.pth'))


def test_demo_vit_at_detector_scope_with_every_input_dynamic_keeps_its_accuracy(
        demo_split, tmp_path):
    """scope='detector' with every token role (the FPN, RPN and RoI heads' conv inputs per
    pixel, in blocks of 16) at W8A8 keeps >= 90 % of the float AP: a per-pixel quantized FPN
    once handed mmcv's RoIAlign channels-last features and the detector fell to ~0 AP."""
    from mmq.config.quant_config import TOKEN_ROLES
    fp = _run('vit', demo_split, str(tmp_path / 'float'))
    q = _run('vit', demo_split, str(tmp_path / 'w8a8'),
             dict(FAST_QUANT, w_bits=8, a_bits=8, scope='detector',
                  token_roles=list(TOKEN_ROLES), token_group_size=16), num_images=2)
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert fp[key] > 0.3, fp
        assert q[key] >= 0.9 * fp[key], (key, fp[key], q[key])


def test_fpcs_beats_minmax_on_the_demo_vit_at_w3a3(demo_split, tmp_path):
    """The FPCS search must do better than the MinMax ranges it starts beyond (measured on
    the full val split: 0.556 vs 0.239 box AP)."""
    w3a3 = dict(FAST_QUANT, w_bits=3, a_bits=3)
    fpcs = _run('vit', demo_split, str(tmp_path / 'fpcs'), w3a3)
    minmax = _run('vit', demo_split, str(tmp_path / 'minmax'),
                  dict(w3a3, calibrator='minmax', softmax='uniform', gelu='uniform'))
    assert fpcs['coco/bbox_mAP'] > minmax['coco/bbox_mAP'] + 0.05, (fpcs, minmax)
    assert fpcs['coco/segm_mAP'] > minmax['coco/segm_mAP'] + 0.05, (fpcs, minmax)


def _dinov2_cfg(data: str, work_dir: str, depth: int = None) -> Config:
    cfg = _on_split(osp.join(ROOT, DINOV2[0]), data, work_dir)
    if depth is not None:
        cfg.model.backbone.update(depth=depth, frozen_blocks=depth)
    cfg.log_level = 'WARNING'
    return cfg


def test_dinov2_config_quantizes_through_runner_test(demo_split, tmp_path):
    """The real-backbone demo config (DINOv2 ViT-S/14 layout: patch 14 resized to stride 16,
    class token, LayerScale), random weights cut to 2 blocks, quantized at W4A4 through
    Runner.test() (the full 12-block run is the slow test below)."""
    cfg = _dinov2_cfg(demo_split, str(tmp_path / 'work'), depth=2)
    cfg.model.backbone.pretrained = None
    cfg.quant_cfg = dict(FAST_QUANT)
    cfg.custom_imports = dict(imports=['mmq'], allow_failed_imports=False)
    cfg.custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=2,
                             require_checkpoint=False)]
    torch.manual_seed(0)
    metrics = Runner.from_cfg(cfg).test()
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(metrics)
    report = __import__('json').load(open(osp.join(cfg.work_dir, 'calibration_report.json')))
    assert [u['unit'] for u in report['units']][:3] == ['vit.patch_embed', 'vit.blocks.0',
                                                        'vit.blocks.1']


@pytest.mark.slow
def test_committed_dinov2_detector_keeps_its_accuracy_at_w6a6(demo_split, tmp_path):
    """The committed DINOv2 detector (full depth) at W6A6 keeps >= 90 % of its float AP."""
    fp_cfg = _dinov2_cfg(demo_split, str(tmp_path / 'float'))
    fp_cfg.model.backbone.pretrained = None
    fp_cfg.load_from = osp.join(ROOT, DINOV2[1])
    torch.manual_seed(0)
    fp = Runner.from_cfg(fp_cfg).test()
    q_cfg = _dinov2_cfg(demo_split, str(tmp_path / 'w6a6'))
    q_cfg.model.backbone.pretrained = None
    q_cfg.load_from = osp.join(ROOT, DINOV2[1])
    q_cfg.quant_cfg = dict(FAST_QUANT, w_bits=6, a_bits=6)
    q_cfg.custom_imports = dict(imports=['mmq'], allow_failed_imports=False)
    q_cfg.custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=4)]
    q = Runner.from_cfg(q_cfg).test()
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert q[key] >= 0.9 * fp[key], (key, fp[key], q[key])


def test_detector_scope_reconstructs_the_neck(demo_split, tmp_path):
    """scope='detector' with reconstruction: the ViTDet pyramid (plain MSE over its levels)
    and, after the backbone, the FPN are reconstructed too (their weight quantizers hold
    learned rounding); with ``box_head`` the RoI box head after them, on the float model's
    RoIs (plain MSE of its class scores and box deltas)."""
    work = str(tmp_path / 'rec')
    _run('vit', demo_split, work, dict(FAST_QUANT, scope='detector',
                                       stages=['calibrate', 'reconstruct'],
                                       # 16 steps: at 8 the neck's gain is within the
                                       # rerun noise (one CPU thread: it reverted)
                                       reconstruct=dict(iters=16, batch=2, aph_images=1,
                                                        box_head=True, box_head_rois=64)),
         num_images=2)
    report = __import__('json').load(open(osp.join(work, 'calibration_report.json')))
    neck = [u for u in report['units'] if u.get('unit') == 'neck']
    assert len(neck) == 1 and neck[0]['stage'] == 'reconstruct' and neck[0]['layers'] > 0
    state = torch.load(osp.join(work, 'quantized_state.pth'), weights_only=True)['state_dict']
    rounding = [k for k, v in state.items()
                if k.startswith('neck.') and k.endswith('weight_quantizer.rounding')]
    assert rounding and all(state[k].numel() > 0 for k in rounding), rounding
    pyramid = [u for u in report['units'] if u.get('unit') == 'pyramid'
               and u['stage'] == 'reconstruct']
    assert len(pyramid) == 1 and pyramid[0]['objective'] == 'mse', pyramid
    assert pyramid[0]['layers'] > 0 and pyramid[0]['loss_trained'] < pyramid[0]['loss_before']
    box = [u for u in report['units'] if u.get('unit') == 'roi_head.bbox_head']
    assert len(box) == 1 and box[0]['stage'] == 'reconstruct' and box[0]['objective'] == 'mse'
    assert box[0]['layers'] > 0 and box[0]['loss_trained'] < box[0]['loss_before'], box
    rounding = [k for k in state if k.startswith('roi_head.bbox_head.')
                and k.endswith('weight_quantizer.rounding')]
    assert rounding and (box[0]['reverted'] or all(state[k].numel() > 0 for k in rounding))


def test_backbone_reconstruction_does_not_depend_on_the_scope(demo_split, tmp_path):
    """scope='detector' adds the neck and heads after the backbone; the backbone's calibration
    and reconstruction (same seed, images and schedule) come out bit-identical to
    scope='backbone', rounding decisions included. Block reconstruction is chaotic (a
    float-rounding change anywhere in a step flips rounding variables and moves the AP), so
    a backbone-scope row and a detector-scope row compare the neck and heads only while
    this holds."""
    rec = dict(FAST_QUANT, stages=['calibrate', 'reconstruct'],
               reconstruct=dict(iters=8, batch=2, aph_images=1))
    states = {}
    for scope in ('backbone', 'detector'):
        work = str(tmp_path / scope)
        _run('vit', demo_split, work, dict(rec, scope=scope), num_images=2)
        state = torch.load(osp.join(work, 'quantized_state.pth'),
                           weights_only=True)['state_dict']
        states[scope] = {k: v for k, v in state.items() if k.startswith('backbone.')}
    a, b = states['backbone'], states['detector']
    learned = [k for k in a if k.endswith('weight_quantizer.rounding') and a[k].numel()]
    assert a.keys() == b.keys() and learned  # some block kept its learned rounding
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
