"""End to end on the stock Swin-T Mask R-CNN config (random weights, generated COCO data)."""
import copy
import json
import os.path as osp
from unittest.mock import patch

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.runner import Runner

import mmq
from mmq.models import count_quant_layers, set_quant_enabled
from mmq.models.quant_conv import QuantConv2d
from mmq.models.quant_linear import QuantLinear
from mmq.quantizers import TokenQuantizer
from .conftest import FAST_QUANT, swin_config


def _images(n, h=160, w=224, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, h, w, generator=g) for _ in range(n)]


@pytest.fixture(scope='module')
def swin_backbone():
    from mmdet.models.backbones import SwinTransformer
    torch.manual_seed(0)
    model = SwinTransformer(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                            window_size=7, convert_weights=False)
    model.eval()
    return model


@pytest.fixture(scope='module')
def calibrated(swin_backbone):
    model = copy.deepcopy(swin_backbone)
    report = mmq.quantize(model, _images(2), FAST_QUANT)
    return model, report


def test_every_block_linear_and_matmul_is_quantized(calibrated):
    model, report = calibrated
    counts = count_quant_layers(model)
    # Swin-T: 12 blocks x (qkv, proj, fc1, fc2) + 3 PatchMerging reductions = 51 Linear;
    # 12 blocks x 2 attention matmuls; the patch-embedding conv.
    assert counts == dict(QuantLinear=51, QuantMatMul=24, QuantConv2d=1)
    assert report['layer_counts'] == counts
    assert len(report['units']) == 16  # embed, 12 blocks, 3 downsamples
    # Each unit's inputs went through it 3 times (LN stats, capture, output): constant.
    assert {u['unit_passes'] for u in report['units'] if u['unit'].startswith('stages.')
            and 'blocks' in u['unit']} == {3}


def test_float_mode_after_reparameterization_matches_original(swin_backbone, calibrated):
    model, _ = calibrated
    x = _images(1, seed=1)[0]
    with torch.no_grad():
        ref = swin_backbone(x)
        set_quant_enabled(model, False)
        try:
            out = model(x)
        finally:
            set_quant_enabled(model, True)
        quant = model(x)
    for r, o, q in zip(ref, out, quant):
        # LayerNorm reparameterization and the folded GELU shift change no float function:
        # measured max |diff| ~1e-5 on outputs of magnitude ~1.
        assert (o - r).abs().max() < 1e-3
        assert not torch.equal(q, r)  # quantized mode really quantizes


def test_quantized_outputs_track_float(swin_backbone, calibrated):
    model, report = calibrated
    x = _images(1, seed=2)[0]
    with torch.no_grad():
        ref, quant = swin_backbone(x), model(x)
    for r, q in zip(ref, quant):
        cos = torch.nn.functional.cosine_similarity(r.flatten(), q.flatten(), dim=0)
        assert cos > 0.8
    for unit in report['units']:
        for layer in unit['layers']:
            assert np.isfinite(layer['sqnr_db']) and layer['sqnr_db'] > 5


def test_save_load_bit_identical(swin_backbone, calibrated, tmp_path):
    model, report = calibrated
    path = mmq.save_quantized_state(model, str(tmp_path / 'q.pth'),
                                    mmq.QuantConfig.from_dict(report['quant_cfg']))
    fresh = copy.deepcopy(swin_backbone)
    mmq.load_quantized_state(fresh, path)
    x = _images(1, seed=3)[0]
    with torch.no_grad():
        for a, b in zip(model(x), fresh(x)):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match='does not match'):
        mmq.load_quantized_state(copy.deepcopy(swin_backbone), path, dict(w_bits=6, a_bits=6))


def test_errors_are_clear(swin_backbone):
    with pytest.raises(ValueError, match='calibration set is empty'):
        mmq.quantize(copy.deepcopy(swin_backbone), [], FAST_QUANT)
    bad = _images(1)
    bad[0][0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='non-finite'):
        mmq.quantize(copy.deepcopy(swin_backbone), bad, FAST_QUANT)
    with pytest.raises(TypeError, match='unsupported backbone ResNet'):
        from mmdet.models.backbones import ResNet
        mmq.quantize(ResNet(18), _images(1), FAST_QUANT)
    # mmdet's SwinTransformer.eval() returns None: say so rather than "backbone NoneType".
    with pytest.raises(TypeError, match=r'needs the model \(an nn.Module\), got NoneType'):
        mmq.quantize(copy.deepcopy(swin_backbone).eval(), _images(1), FAST_QUANT)
    with pytest.raises(ValueError, match='w_bits=9'):
        mmq.QuantConfig(w_bits=9)
    with pytest.raises(ValueError, match='unknown quant_cfg key'):
        mmq.QuantConfig.from_dict(dict(wbits=4))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        mmq.load_quantized_state(copy.deepcopy(swin_backbone), '/nonexistent/q.pth')


def test_runner_test_with_coco_metric(shapes_data, tmp_path):
    work_dir = str(tmp_path / 'work')
    cfg = swin_config(shapes_data, work_dir, FAST_QUANT, tmp_path)
    # The float checkpoint is one mmengine's training loop writes (message hub, numpy values),
    # which torch.load(weights_only=True) refuses: the hook has the Runner read it without
    # running code.
    weights = {k: v + 1e-3 * torch.randn_like(v) if v.is_floating_point() else v
               for k, v in Runner.from_cfg(copy.deepcopy(cfg)).model.state_dict().items()}
    hub = MessageHub.get_instance('mmq_test_runner_checkpoint')
    hub.update_scalar('train/loss', 0.5)
    cfg.load_from = str(tmp_path / 'epoch_12.pth')
    torch.save(dict(state_dict=weights, message_hub=hub.state_dict(),
                    meta=dict(epoch=12, seed=np.int64(0))), cfg.load_from)
    cfg.custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=2)]
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    head = 'roi_head.bbox_head.fc_cls.weight'  # left float at backbone scope
    assert torch.equal(runner.model.state_dict()[head], weights[head])
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50'):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0
    report = json.load(open(osp.join(work_dir, 'calibration_report.json')))
    assert report['status'] == 'done' and report['num_images'] == 2
    # Calibration images come from the training split.
    assert all('/train/' in p for p in report['calibration_images'])
    assert osp.isfile(osp.join(work_dir, 'quantized_state.pth'))
    # The per-block partial state is removed once calibration finished.
    assert not osp.exists(osp.join(work_dir, 'quantized_state.partial.pth'))


def test_detector_scope_quantizes_neck_and_heads(shapes_data, tmp_path):
    work_dir = str(tmp_path / 'work')
    cfg = swin_config(shapes_data, work_dir, dict(FAST_QUANT, scope='detector'), tmp_path)
    metrics = Runner.from_cfg(cfg).test()
    assert 0.0 <= metrics['coco/segm_mAP'] <= 1.0
    report = json.load(open(osp.join(work_dir, 'calibration_report.json')))
    counts = report['layer_counts']
    # Backbone 51 Linear + RoI box head 2 shared fcs + fc_cls + fc_reg; convs: patch embed,
    # FPN 4 lateral + 4 output, RPN conv + cls + reg, mask head 4 convs + logits (its
    # ConvTranspose2d stays float).
    assert counts == dict(QuantLinear=55, QuantMatMul=24, QuantConv2d=1 + 8 + 3 + 5)
    neck = report['units'][-1]
    assert neck['unit'] == 'neck_and_heads' and len(neck['layers']) == 4 + 8 + 3 + 5
    assert report['backbone_passes'] == pytest.approx(
        np.mean([u['unit_passes'] for u in report['units'][:-1]]))


def test_hook_requires_a_checkpoint(shapes_data, tmp_path):
    cfg = swin_config(shapes_data, str(tmp_path / 'w'), FAST_QUANT, tmp_path)
    cfg.custom_hooks = [dict(type='mmq.QuantCalibrationHook', num_images=2)]
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='no float checkpoint'):
        runner.test()


def test_hook_says_when_the_dataset_has_fewer_images_than_asked(shapes_data, tmp_path):
    from mmq.hooks import QuantCalibrationHook
    cfg = swin_config(shapes_data, str(tmp_path / 'w'), FAST_QUANT, tmp_path)
    runner = Runner.from_cfg(cfg)
    size = len(runner.train_dataloader.dataset)
    hook = QuantCalibrationHook(num_images=size + 5)
    with patch.object(runner.logger, 'warning') as warning:
        loader = hook.calibration_loader(runner)
    assert len(loader) == size
    assert any(f'num_images={size + 5}' in str(c) and f'has {size} images' in str(c)
               for c in warning.call_args_list)
    with patch.object(runner.logger, 'warning') as warning:
        assert len(QuantCalibrationHook(num_images=2).calibration_loader(runner)) == 2
    assert not warning.called


def test_activation_spill_to_disk_gives_identical_results(tmp_path):
    from mmq.calibration import ActivationStore
    store = ActivationStore(budget_bytes=100, spill_dir=str(tmp_path / 'spill'))
    items = [(torch.randn(4, 8), (2, 2)) for _ in range(3)]
    for item in items:
        store.append(item)
    assert store.spilled == 3  # 128 bytes each: none fits a 100-byte budget
    for (a, hw), (b, hw2) in zip(items, store):
        assert torch.equal(a, b) and hw == hw2
    store.close()
    assert list((tmp_path / 'spill').iterdir()) == []  # spilled files are removed


def test_sibling_stores_share_one_memory_budget(tmp_path):
    """The images, a block's inputs and its outputs are open together: the budget bounds
    them all, not each (else a calibration holds several times its budget)."""
    from mmq.calibration import ActivationStore
    store = ActivationStore(budget_bytes=300, spill_dir=str(tmp_path))
    items = [(torch.randn(4, 8), ) for _ in range(4)]  # 128 bytes each
    store.append(items[0])
    store.append(items[1])
    sibling = store.sibling()
    sibling.append(items[2])  # 384 > 300 bytes in all: spilled
    assert (store.memory_bytes, sibling.memory_bytes, sibling.spilled) == (256, 0, 1)
    store.close()  # its bytes are free again
    sibling.append(items[3])
    assert (sibling.memory_bytes, sibling.spilled) == (128, 1)
    assert [torch.equal(a, b) for (a, ), (b, ) in zip(items[2:], sibling)] == [True, True]
    sibling.close()
    fresh = ActivationStore(budget_bytes=300, spill_dir=str(tmp_path))
    fresh.append(items[0])
    fresh.sibling().append(items[1])
    assert fresh.memory_bytes == 128  # another calibration's stores have their own budget


def test_activation_store_keeps_cpu_items_off_the_device_tier(tmp_path):
    """CPU items use only the host budget and disk (the device tier is for accelerator items):
    a device budget set does not change where they go or how they come back."""
    from mmq.calibration import ActivationStore
    store = ActivationStore(budget_bytes=200, spill_dir=str(tmp_path), device_budget_bytes=10**9)
    items = [(torch.randn(4, 8), ) for _ in range(3)]
    for item in items:
        store.append(item)
    assert (store.device_bytes, store.memory_bytes, store.spilled) == (0, 128, 2)
    assert store.sibling().device_budget_bytes == 10**9
    for (a, ), (b, ) in zip(items, store):
        assert b.device.type == 'cpu' and torch.equal(a, b)
    store.close()


def test_proj_reparam_on_shifted_padded_swin_windows_is_exact_and_saved(tmp_path):
    """Attention-output reparameterization on Swin (shifted, zero-padded windows: 36x36
    patches with window 8): the float function is unchanged, the folded offsets are saved and
    reloaded bit-identically, and a state saved before ``out_offset`` existed still loads."""
    from mmdet.models.backbones import SwinTransformer
    torch.manual_seed(0)
    swin = SwinTransformer(embed_dims=32, depths=[2, 1], num_heads=[2, 2], window_size=8,
                           out_indices=(0, ), convert_weights=False)
    swin.eval()  # (mmdet's Swin.train returns None)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(1, 3, 144, 144, generator=g) for _ in range(2)]
    x = torch.randn(1, 3, 144, 144, generator=g)
    with torch.no_grad():
        ref = swin(x)[0]
    cfg = dict(FAST_QUANT, proj_reparam=True)
    model = copy.deepcopy(swin)
    mmq.quantize(model, calib, cfg)
    w_msa = model.stages[0].blocks[1].attn.w_msa
    assert w_msa.out_offset.abs().sum() > 0
    set_quant_enabled(model, False)
    with torch.no_grad():
        assert (model(x)[0] - ref).abs().max() < 1e-3
    set_quant_enabled(model, True)
    path = mmq.save_quantized_state(model, str(tmp_path / 'q.pth'), mmq.QuantConfig(**cfg))
    fresh = copy.deepcopy(swin)
    mmq.load_quantized_state(fresh, path)
    with torch.no_grad():
        assert torch.equal(model(x)[0], fresh(x)[0])
    # An older state (no out_offset keys) loads with zero offsets.
    plain = copy.deepcopy(swin)
    mmq.quantize(plain, calib, FAST_QUANT)
    state = {k: v for k, v in plain.state_dict().items() if not k.endswith('out_offset')}
    again = copy.deepcopy(plain)
    again.load_state_dict(state)
    assert all(float(m.out_offset.abs().sum()) == 0 for m in again.modules()
               if hasattr(m, 'out_offset'))


def test_layernorm_statistics_pass_stops_once_the_linears_have_their_inputs(swin_backbone):
    """The LayerNorm-reparameterization pass only needs the inputs of the LayerNorm-fed
    Linears: each item's forward stops at the last of them (fc1), so fc2 never runs, and the
    per-channel ranges equal those of a full forward."""
    from mmq.calibration.activation_store import ActivationStore
    from mmq.calibration.block_calibration import _input_channel_ranges
    from mmq.config.quant_config import QuantConfig
    from mmq.models.adapters import build_units, layernorm_pairs
    from mmq.models.transform import quantize_modules
    model = copy.deepcopy(swin_backbone)
    quantize_modules(model, QuantConfig.from_dict(FAST_QUANT))
    units = build_units(model)
    store = ActivationStore(2**30)
    with torch.no_grad():
        for x in _images(2):
            store.append(units[0].run((x, )))
    block = units[1]
    linears = [lin for m in block.module.modules() for _, lin, _ in layernorm_pairs(m)]
    assert linears[-1] is block.module.ffn.layers[0][0]  # fc1 comes last
    fc2 = block.module.ffn.layers[1]
    calls = []
    handle = fc2.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with torch.no_grad():
            ranges = _input_channel_ranges(block, store, linears)
        assert calls == []  # the MLP after fc1 never ran
        full = {}
        hooks = [lin.register_forward_pre_hook(
            lambda m, a: full.setdefault(id(m), []).append(a[0].reshape(-1, m.in_features)))
            for lin in linears]
        with torch.no_grad():
            for item in store:
                block.run(item)
        for h in hooks:
            h.remove()
        assert len(calls) == 2  # a full forward does run it
    finally:
        handle.remove()
        store.close()
    for lin in linears:
        rows = torch.cat(full[id(lin)])
        assert torch.equal(ranges[id(lin)][0], rows.amin(0))
        assert torch.equal(ranges[id(lin)][1], rows.amax(0))


def test_output_sqnr_reference_comes_from_the_float_capture_pass(swin_backbone):
    """The capture pass runs each block in float (none of its quantizers is calibrated yet):
    its outputs are the output SQNR's reference, so no block runs a float pass more (before:
    the first 4 items ran again with quantization off). The SQNR is the one that float pass
    gives, exactly."""
    from mmq.calibration import block_calibration as bc
    model = copy.deepcopy(swin_backbone)
    block = model.stages[0].blocks[0]
    runs, outputs = [], []

    def hook(module, args, out):
        runs.append(module.ffn.layers[0][0].input_quantizer.is_active)
        outputs.append(out)

    handle = block.register_forward_hook(hook)
    try:
        report = mmq.quantize(model, _images(2, seed=3), FAST_QUANT)
    finally:
        handle.remove()
    # Capture (float) and output (quantized) passes on 2 images; the LayerNorm statistics
    # pass stops inside the block (at fc1), so its forward never completes.
    assert runs == [False, False, True, True]
    unit = next(u for u in report['units'] if u['unit'] == 'stages.0.blocks.0')
    expected = np.mean([bc.sqnr_db(ref, out) for ref, out in zip(outputs[:2], outputs[2:])])
    assert unit['output_sqnr_db'] == pytest.approx(expected, rel=1e-12)


def test_search_sample_size_does_not_grow_with_the_calibration_set():
    """More images than ``search_rows`` / ``search_windows``: the search scores that many rows
    and maps in all (from seeded items), not one per image, so its cost stays flat; with
    fewer images every image gives ``ceil(total / images)``, as before."""
    from mmq.calibration.block_calibration import capture_samples
    from mmq.models.quant_linear import QuantLinear
    from mmq.models.quant_matmul import QuantMatMul
    from mmq.quantizers import UniformQuantizer
    from mmq.utils import seeded_generator
    lin = QuantLinear.from_float(torch.nn.Linear(8, 4), UniformQuantizer(4, ch_axis=0),
                                 UniformQuantizer(4))
    mm = QuantMatMul(UniformQuantizer(4), UniformQuantizer(4))
    qcfg = mmq.QuantConfig(search_rows=16, search_windows=6)
    g = torch.Generator().manual_seed(0)
    items = [(torch.randn(1, 10, 8, generator=g), torch.randn(1, 2, 5, 3, generator=g),
              torch.randn(1, 2, 3, 5, generator=g)) for _ in range(40)]

    def sizes(num_items, seed=0):
        def run_all():
            for x, a, b in items[:num_items]:
                lin(x)
                mm(a, b)
            return num_items
        got = capture_samples([lin, mm], run_all, qcfg, seeded_generator(seed, 'calibrate'),
                              num_items)
        return got[id(lin)], got[id(mm)]

    rows, (a, b) = sizes(40)
    assert rows.shape == (16, 8) and a.shape[0] == b.shape[0] == 6
    again, (a2, _) = sizes(40)
    assert torch.equal(rows, again) and torch.equal(a, a2)  # seeded
    other, _ = sizes(40, seed=1)
    assert not torch.equal(rows, other)
    rows, (a, b) = sizes(4)  # 4 rows of each item's 10, 2 maps of each item's 1 -> 1
    assert rows.shape == (16, 8) and a.shape[0] == 4


def test_detector_scope_with_block_scaled_token_roles(shapes_data, tmp_path):
    """The stock Swin-T Mask R-CNN at detector scope with every token role and 16-feature
    groups: every Linear / Conv input of the neck and heads (and the backbone's) but the
    pixels becomes a grouped TokenQuantizer (convs per pixel), as do both operands of every
    window's ``A @ v`` (49 tokens: a partial last group), all calibrated, and the model
    evaluates."""
    from mmq.config.quant_config import TOKEN_ROLES
    work_dir = str(tmp_path / 'work')
    roles = list(TOKEN_ROLES)
    cfg = swin_config(shapes_data, work_dir, dict(FAST_QUANT, scope='detector', token_roles=roles,
                                                  token_group_size=16), tmp_path)
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    assert 0.0 <= metrics['coco/segm_mAP'] <= 1.0
    model = runner.model
    layers = [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    inputs = [m.input_quantizer for m in layers if m.input_quantizer is not None]
    assert len(inputs) == len(layers) - 1  # the patch embedding sees pixels
    assert all(isinstance(q, TokenQuantizer) and q.group_size == 16 and bool(q.calibrated)
               for q in inputs)
    assert sum(isinstance(m, QuantConv2d) for m in layers) == 1 + 8 + 3 + 5
    av = [m.av_matmul for m in model.modules() if hasattr(m, 'av_matmul')]
    assert len(av) == 12 and all(
        isinstance(q, TokenQuantizer) and q.group_size == 16 and bool(q.calibrated)
        for m in av for q in (m.a_quantizer, m.b_quantizer))


def test_stock_swin_patch_embedding_and_merging_are_recognised():
    """mmdet's SwinTransformer builds mmdet's own PatchEmbed / PatchMerging (not mmcv's):
    the patch embedding's pixels stay float and every PatchMerging reduction is a
    post-LayerNorm input (reparameterized from its norm, per token with 'ln_input')."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    from mmq.calibration.quantize import prepare
    from mmq.models.adapters import layernorm_pairs
    from .conftest import STOCK_SWIN
    register_all_modules()
    model = MODELS.build(get_config(STOCK_SWIN).model)
    backbone = model.backbone
    merges = [stage.downsample for stage in backbone.stages if stage.downsample is not None]
    assert len(merges) == 3
    prepare(backbone, dict(FAST_QUANT, token_roles=['ln_input']))
    assert backbone.patch_embed.projection.input_quantizer is None
    for merge in merges:
        assert isinstance(merge.reduction.input_quantizer, TokenQuantizer)
        assert [(n, r) for n, r, _ in layernorm_pairs(merge)] == [(merge.norm, merge.reduction)]
