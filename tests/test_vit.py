"""The same transform and calibration on timm ViTs: a plain classifier and the ViTDet-style
backbone in a Mask R-CNN."""
import copy

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import mmq
from mmq.models import (QuantTimmAttention, QuantTimmViTDet, TimmViTDet, count_quant_layers,
                        set_quant_enabled)
from .conftest import FAST_QUANT


def _images(n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, size, size, generator=g) for _ in range(n)]


@pytest.fixture(scope='module')
def vit():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2,
                              num_classes=10, init_values=1e-1)  # with LayerScale
    return model.eval()


def test_timm_classifier_quantizes_and_tracks_float(vit):
    model = copy.deepcopy(vit)
    report = mmq.quantize(model, _images(2), FAST_QUANT)
    counts = count_quant_layers(model)
    # 2 blocks x (qkv, proj, fc1, fc2) + head; 2 matmuls per block; the patch embedding.
    assert counts == dict(QuantLinear=9, QuantMatMul=4, QuantConv2d=1)
    assert sum(isinstance(m, QuantTimmAttention) for m in model.modules()) == 2
    assert [u['unit'] for u in report['units']] == ['patch_embed', 'blocks.0', 'blocks.1', 'head']
    x = _images(1, seed=5)[0]
    with torch.no_grad():
        ref = vit(x)
        quant = model(x)
        set_quant_enabled(model, False)
        floated = model(x)
    # The explicit-Softmax attention and the reparameterizations keep the float function
    # (timm's own path is fused SDPA): measured max |diff| ~1e-6.
    torch.testing.assert_close(floated, ref, rtol=0, atol=1e-4)
    assert torch.nn.functional.cosine_similarity(quant.flatten(), ref.flatten(), 0) > 0.9


def test_vitdet_backbone_in_mask_rcnn(shapes_data, tmp_path):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg_file = tmp_path / 'vitdet.py'
    cfg_file.write_text(
        "_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']\n"
        "model = dict(backbone=dict(_delete_=True, type='mmq.QuantTimmViTDet', img_size=64,\n"
        "    embed_dims=64, depth=2, num_heads=2, out_channels=64,\n"
        "    quant_cfg=dict(w_bits=4, a_bits=4)),\n"
        "    neck=dict(in_channels=[64, 64, 64, 64]))\n")
    cfg = Config.fromfile(str(cfg_file))
    torch.manual_seed(0)
    detector = MODELS.build(cfg.model)
    detector.eval()
    assert isinstance(detector.backbone, QuantTimmViTDet)
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = detector.backbone(img)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    report = mmq.quantize(detector.backbone, [img, torch.randn(1, 3, 64, 96)], FAST_QUANT)
    assert report['units'][-1]['unit'] == 'pyramid'
    # Pyramid convs are quantized; its ConvTranspose2d stay float.
    assert count_quant_layers(detector.backbone)['QuantConv2d'] == 1 + 8
    with torch.no_grad():
        quant_feats = detector.backbone(img)
    assert all(torch.isfinite(f).all() for f in quant_feats)


def test_vitdet_levels_are_contiguous_for_mmcv_roi_align():
    from mmcv.ops import RoIAlign
    model = TimmViTDet(img_size=64, patch_size=8, embed_dims=32, depth=1, num_heads=2,
                       out_channels=16, scales=(2.0, 1.0)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert all(f.is_contiguous() for f in feats)
    # Why it matters: mmcv's CPU RoIAlign gives another answer on channels-last strides.
    rois = torch.tensor([[0, 4., 6., 40., 50.]])
    op = RoIAlign(7, spatial_scale=0.25, sampling_ratio=0, aligned=True)
    strided = feats[0].contiguous(memory_format=torch.channels_last)
    assert not torch.allclose(op(strided, rois), op(feats[0], rois))


def test_vitdet_rejects_unpadded_input():
    with pytest.raises(ValueError, match='not divisible'):
        TimmViTDet(img_size=64, embed_dims=32, depth=1, num_heads=2)(torch.randn(1, 3, 60, 64))


def test_vitdet_conv_stem_quantizes_all_but_the_pixel_input():
    torch.manual_seed(0)
    kwargs = dict(img_size=64, patch_size=8, embed_dims=32, depth=1, num_heads=2,
                  out_channels=16, stem_channels=(8, 16, 32))
    float_model = TimmViTDet(**kwargs).eval()
    img = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = float_model(img)
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 48), (16, 24), (8, 12), (4, 6)]
    model = QuantTimmViTDet(quant_cfg=dict(w_bits=4, a_bits=4), **kwargs).eval()
    assert not model.load_state_dict(float_model.state_dict(), strict=False).unexpected_keys
    stem_convs = [m for m in model.vit.patch_embed.modules()
                  if type(m).__name__ == 'QuantConv2d']
    assert len(stem_convs) == 4  # 3 stem convs + the 1x1 projection
    assert stem_convs[0].input_quantizer is None  # the pixels stay float
    assert all(c.input_quantizer is not None for c in stem_convs[1:])
    report = mmq.quantize(model, [img[:1], img[1:]], FAST_QUANT)
    assert report['units'][0]['unit'] == 'vit.patch_embed'
    with torch.no_grad():
        quant_feats = model(img)
    assert all(torch.isfinite(f).all() for f in quant_feats)
    with pytest.raises(ValueError, match='stride 4, but patch_size=8'):
        TimmViTDet(**dict(kwargs, stem_channels=(8, 16)))


def test_window_attention_is_local_and_calibrates():
    from mmq.models.backbones.vit_det import window_block
    tokens = torch.randn(2, 6 * 7, 5)  # a 6x7 grid: padded to whole 4x4 windows, cropped back
    assert torch.equal(window_block(torch.nn.Identity(), tokens, (6, 7), 4), tokens)
    torch.manual_seed(0)
    kwargs = dict(img_size=64, patch_size=8, embed_dims=32, depth=2, num_heads=2,
                  out_channels=16, window_size=4, global_blocks=(1, ))
    model = TimmViTDet(**kwargs).eval()
    x = torch.randn(1, 8 * 12, 32)
    moved = x.clone()
    moved[0, 0] += torch.randn(32)  # a token of the top-left window (not a constant: LN)
    with torch.no_grad():
        diff = (model.run_block(0, x, (8, 12)) - model.run_block(0, moved, (8, 12))).abs()
        global_diff = (model.run_block(1, x, (8, 12)) - model.run_block(1, moved, (8, 12))).abs()
    changed = diff.sum(-1).reshape(8, 12) > 0
    assert changed[:4, :4].all() and not changed[4:].any() and not changed[:, 4:].any()
    assert (global_diff.sum(-1) > 0).all()
    with pytest.raises(ValueError, match='global_blocks'):
        TimmViTDet(**dict(kwargs, global_blocks=(2, )))
    quant = QuantTimmViTDet(quant_cfg=dict(w_bits=4, a_bits=4), **kwargs).eval()
    quant.load_state_dict(model.state_dict(), strict=False)
    imgs = [torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)]
    mmq.quantize(quant, imgs, FAST_QUANT)
    with torch.no_grad():
        set_quant_enabled(quant, False)
        floated = quant(imgs[0])
        ref = model(imgs[0])
    for a, b in zip(floated, ref):  # the unit chain runs the same windowed blocks
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_spilled_calibration_matches_in_memory(vit):
    in_memory, spilled = copy.deepcopy(vit), copy.deepcopy(vit)
    images = _images(3)
    mmq.quantize(in_memory, images, FAST_QUANT)
    report = mmq.quantize(spilled, images, FAST_QUANT, activation_budget_bytes=1)
    assert max(u['spilled_items'] for u in report['units']) == 3
    x = _images(1, seed=9)[0]
    with torch.no_grad():
        assert torch.equal(in_memory(x), spilled(x))


def test_resume_after_a_crash_matches_an_uninterrupted_run(vit, tmp_path):
    from mmq.calibration import load_partial_state, save_partial_state
    images = _images(2)
    qcfg = mmq.QuantConfig.from_dict(FAST_QUANT)
    full = copy.deepcopy(vit)
    mmq.quantize(full, images, FAST_QUANT)
    path = str(tmp_path / 'partial.pth')
    crashed = copy.deepcopy(vit)
    done = []

    def save_then_crash(report):
        done.append(report)
        save_partial_state(crashed, path, qcfg, report['index'] + 1, done)
        if report['index'] == 1:
            raise RuntimeError('simulated crash after block 0')

    with pytest.raises(RuntimeError, match='simulated crash'):
        mmq.quantize(crashed, images, FAST_QUANT, on_unit_done=save_then_crash)
    partial = load_partial_state(path)
    assert partial['units_done'] == 2
    resumed = copy.deepcopy(vit)
    report = mmq.quantize(resumed, images, FAST_QUANT, resume=partial)
    assert [u['unit'] for u in report['units']] == ['patch_embed', 'blocks.0', 'blocks.1', 'head']
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match='another quant_cfg'):
        mmq.quantize(copy.deepcopy(vit), images, dict(FAST_QUANT, w_bits=6), resume=partial)
