"""Dynamic per-token activation quantization (``quant_cfg.token_roles``)."""
import copy
import itertools

import pytest
import torch

import mmq
from mmq.config import QuantConfig
from mmq.config.quant_config import TOKEN_ROLES
from mmq.models.quant_conv import QuantConv2d
from mmq.models.quant_linear import QuantLinear
from mmq.quantizers import (FPCSCalibrator, MinMaxCalibrator, PercentileCalibrator,
                            TokenQuantizer, UniformQuantizer, fpcs_token, token_fake_quant)
from mmq.quantizers.layer_schedule import solve
from mmq.quantizers.objectives import sqnr_db
from .conftest import FAST_QUANT, tiny_vit

TOKENS = ['ln_input', 'proj_input', 'qk']


def _outlier_tokens(rows: int = 256, dim: int = 64, seed: int = 0) -> torch.Tensor:
    """Gaussian tokens, a few of them 50x larger (high-norm tokens)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=g)
    x[::37] *= 50
    return x


def _vit_and_images():
    """A tiny ViT, two calibration batches and a held-out batch (seeded)."""
    vit = tiny_vit(32, 8, 32, 2, 4)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]
    return vit, calib, torch.randn(2, 3, 32, 32, generator=g)


def test_each_token_gets_its_own_grid():
    """With clip 1 every token keeps its own min and max (up to half a step) and at most 2^b
    levels, along the feature axis asked for (rows, or columns for k^T)."""
    x = _outlier_tokens()
    for axis, t in ((-1, x), (-2, x.t())):
        out = token_fake_quant(t, torch.tensor(1.0), 4, axis)
        per_token = out if axis == -1 else out.t()
        for row, ref in zip(per_token[:5], x[:5]):
            assert row.unique().numel() <= 16
            step = float(ref.max() - ref.min()) / 15
            assert abs(float(row.max() - ref.max())) <= step / 2 + 1e-6
            assert abs(float(row.min() - ref.min())) <= step / 2 + 1e-6
    # A static per-tensor grid spends its levels on the outlier tokens: the others lose.
    static = UniformQuantizer(4)
    MinMaxCalibrator()(static, x)
    dynamic = TokenQuantizer(4)
    MinMaxCalibrator()(dynamic, x)
    normal = torch.ones(x.shape[0], dtype=torch.bool)
    normal[::37] = False
    err = lambda q: float((q(x) - x)[normal].pow(2).mean())  # noqa: E731
    assert err(dynamic) < 0.05 * err(static)


def test_clip_search_beats_its_grid_and_the_full_range():
    """FPCS's clip search is never worse than its own initial grid nor than clip 1."""
    x = _outlier_tokens()
    x = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).pow(3)
    result = fpcs_token(x, 3)
    clip = float(result.params[0, 0])
    loss = lambda c: float((token_fake_quant(x, torch.tensor(c), 3) - x).pow(2).mean())  # noqa
    assert 0 < clip <= 1
    assert loss(clip) == pytest.approx(float(result.loss[0]), rel=1e-5)
    grid = torch.linspace(0.3, 1.0, 15).tolist()
    assert loss(clip) <= min(loss(c) for c in grid) + 1e-7
    assert loss(clip) < loss(1.0)


def test_calibrators_set_the_clip_ratio():
    x = _outlier_tokens()
    for calibrator, expect_one in ((MinMaxCalibrator(), True), (PercentileCalibrator(), True),
                                   (FPCSCalibrator(), False),
                                   (FPCSCalibrator(search_token_clip=False), True)):
        q = TokenQuantizer(4)
        calibrator(q, x)
        assert bool(q.calibrated) and 0 < float(q.clip) <= 1
        assert (float(q.clip) == 1.0) == expect_one
    with pytest.raises(ValueError, match='clip'):
        TokenQuantizer(4).set_params(1.5)
    with pytest.raises(ValueError, match='feature_axis'):
        TokenQuantizer(4, feature_axis=0)


def test_output_search_on_a_linear_layer_lowers_its_error():
    """A Linear whose input has high-norm tokens: per-token input scales (clip searched on
    the layer output) give a far smaller output error than the static per-tensor scale."""
    x = _outlier_tokens(dim=32)
    linear = torch.nn.Linear(32, 16)
    torch.nn.init.normal_(linear.weight, generator=torch.Generator().manual_seed(2))
    qcfg = dict(static=QuantConfig(**FAST_QUANT), tokens=QuantConfig(**FAST_QUANT,
                                                                     token_roles=TOKENS))
    errors = {}
    for name, cfg in qcfg.items():
        layer = QuantLinear.from_float(copy.deepcopy(linear), cfg.weight(),
                                       cfg.activation(role='ln_input'))
        solve(layer.calibration_problem(x), cfg.make_calibrator, rounds=1, b_is_weight=True)
        with torch.no_grad():
            errors[name] = float((layer(x) - linear(x)).pow(2).mean())
    assert isinstance(layer.input_quantizer, TokenQuantizer)
    assert errors['tokens'] < 0.5 * errors['static'], errors


def test_token_roles_place_dynamic_quantizers_and_survive_save_and_load(tmp_path):
    """q / k (k^T by columns), the LayerNorm-fed and proj inputs become TokenQuantizers; v,
    fc2's input and every weight stay static; the calibrated model is close to float, and a
    saved state reloads bit-identically (and is refused as a static layout)."""
    vit, calib, test = _vit_and_images()
    cfg = dict(FAST_QUANT, token_roles=TOKENS)
    model = copy.deepcopy(vit)
    mmq.quantize(model, calib, cfg)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    for q, axis in ((attn.qkv.input_quantizer, -1), (mlp.fc1.input_quantizer, -1),
                    (attn.proj.input_quantizer, -1), (attn.qk_matmul.a_quantizer, -1),
                    (attn.qk_matmul.b_quantizer, -2)):
        assert isinstance(q, TokenQuantizer) and q.feature_axis == axis and bool(q.calibrated)
    assert isinstance(attn.av_matmul.b_quantizer, UniformQuantizer)
    assert not isinstance(mlp.fc2.input_quantizer, TokenQuantizer)
    assert isinstance(attn.qkv.weight_quantizer, UniformQuantizer)
    with torch.no_grad():
        ref, out = vit(test), model(test)
    assert float((out - ref).pow(2).mean() / ref.pow(2).mean()) < 0.5
    path = str(tmp_path / 'q.pth')
    mmq.save_quantized_state(model, path, QuantConfig(**cfg))
    fresh = copy.deepcopy(vit)
    mmq.load_quantized_state(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(test), out)
    mmq.save_quantized_state(model, path, QuantConfig(**FAST_QUANT))  # mislabelled
    with pytest.raises(ValueError, match='does not describe it'):
        mmq.load_quantized_state(copy.deepcopy(vit), path)


@pytest.mark.parametrize('bad', [['weight'], 'qk', ['softmax']])
def test_token_roles_are_checked(bad):
    with pytest.raises(ValueError, match='token_roles'):
        QuantConfig(token_roles=bad)


def test_token_quantizers_pass_gradients_in_block_reconstruction():
    """Reconstruction trains through the dynamic quantizers of every role, in groups with a
    partial last one (their clip ratios stay calibrated): every block's weighted loss falls,
    and the token_clip='full' option reaches the calibrator (clip 1 everywhere)."""
    vit, calib, _ = _vit_and_images()
    model = copy.deepcopy(vit)
    report = mmq.quantize(model, calib, dict(
        FAST_QUANT, token_roles=list(TOKEN_ROLES), token_group_size=6, token_clip='full',
        stages=['calibrate', 'reconstruct'],
        reconstruct=dict(iters=20, batch=2, aph_images=2)))
    tokens = [m for m in model.modules() if isinstance(m, TokenQuantizer)]
    assert tokens and all(float(q.clip) == 1.0 for q in tokens)
    blocks = [u for u in report['units'] if u['stage'] == 'reconstruct'
              and u['unit'].startswith('blocks')]
    assert len(blocks) == 2 and all(u['loss_trained'] < u['loss_before'] for u in blocks)
    x = torch.randn(8, 16, requires_grad=True)
    tokens[0](x).sum().backward()
    assert x.grad is not None and bool((x.grad != 0).any())


def test_grouped_tokens_quantize_each_group_on_its_own_grid():
    """With ``group_size`` every group of a token's features is quantized exactly as a token
    of its own (both layouts), and channels of very different sizes lose far less than with
    one scale per token."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 32, generator=g) * torch.logspace(-2, 1, 32)
    clip = torch.tensor(0.9)
    out = token_fake_quant(x, clip, 4, -1, 8)
    for i in range(4):
        part = x[:, 8 * i:8 * (i + 1)]
        assert torch.equal(out[:, 8 * i:8 * (i + 1)], token_fake_quant(part, clip, 4, -1))
    assert torch.equal(token_fake_quant(x.t(), clip, 4, -2, 8), out.t())
    # K candidate clip ratios at once (the search's layout) give each candidate's result.
    clips = torch.tensor([0.5, 1.0]).view(2, 1, 1)
    both = token_fake_quant(x.unsqueeze(0), clips, 4, -1, 8)
    assert torch.equal(both[1], token_fake_quant(x, torch.tensor(1.0), 4, -1, 8))
    err = lambda q, cols: float((q(x) - x)[:, cols].pow(2).mean())  # noqa: E731
    grouped, whole = TokenQuantizer(4, group_size=8), TokenQuantizer(4)
    for q in (grouped, whole):
        FPCSCalibrator()(q, x)
    assert err(grouped, slice(None)) < 0.6 * err(whole, slice(None))
    assert err(grouped, slice(0, 8)) < 0.01 * err(whole, slice(0, 8))  # the small channels
    assert grouped.integer_scale(x) is None  # no single scale per token to factor out
    # A width the group does not divide ends with a partial group on its own grid.
    ragged = torch.randn(4, 13, generator=g)
    out = token_fake_quant(ragged, clip, 4, -1, 8)
    assert out.shape == ragged.shape
    assert torch.equal(out[:, 8:], token_fake_quant(ragged[:, 8:], clip, 4, -1))
    assert torch.equal(token_fake_quant(ragged.t(), clip, 4, -2, 8), out.t())
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match='group_size'):
            TokenQuantizer(4, group_size=bad)
    with pytest.raises(ValueError, match='needs quant_cfg.token_roles'):
        QuantConfig(token_group_size=8)


def test_grouped_token_roles_calibrate_and_a_mislabelled_state_is_refused(tmp_path):
    """``token_group_size`` reaches every token quantizer of a calibrated ViT, beats one scale
    per token on held-out images, reloads bit-identically, and a state saved under a
    quant_cfg without groups is refused."""
    vit, calib, test = _vit_and_images()
    with torch.no_grad():
        ref = vit(test)
    errors, models = {}, {}
    for group in (None, 4):
        cfg = dict(FAST_QUANT, a_bits=3, token_roles=TOKENS, token_group_size=group)
        model = copy.deepcopy(vit)
        mmq.quantize(model, calib, cfg)
        models[group] = model
        with torch.no_grad():
            errors[group] = float((model(test) - ref).pow(2).mean() / ref.pow(2).mean())
    tokens = [m for m in models[4].modules() if isinstance(m, TokenQuantizer)]
    assert len(tokens) == 10 and all(q.group_size == 4 and bool(q.calibrated) for q in tokens)
    assert errors[4] < errors[None], errors
    path = str(tmp_path / 'q.pth')
    cfg = dict(FAST_QUANT, a_bits=3, token_roles=TOKENS, token_group_size=4)
    mmq.save_quantized_state(models[4], path, QuantConfig(**cfg))
    fresh = copy.deepcopy(vit)
    mmq.load_quantized_state(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(test), models[4](test))
    mmq.save_quantized_state(models[4], path, QuantConfig(**dict(cfg, token_group_size=None)))
    with pytest.raises(ValueError, match='does not describe it'):
        mmq.load_quantized_state(copy.deepcopy(vit), path)


def test_attention_value_and_softmax_token_roles(tmp_path):
    """'v' quantizes v per channel column over the tokens, 'post_softmax' the attention matrix
    per query row (uniform, in place of the log quantizer), both in groups along A @ v's
    reduction axis, partial groups where the token count is not a multiple; calibrated, they
    beat the static per-head v and the post-Softmax log quantizer on held-out images, and a
    state saved as the static layout is refused."""
    vit, calib, test = _vit_and_images()
    with torch.no_grad():
        ref = vit(test)
    five = TOKENS + ['post_gelu', 'other']
    errors, models = {}, {}
    for name, roles in (('static', five), ('tokens', five + ['v', 'post_softmax'])):
        cfg = dict(FAST_QUANT, a_bits=3, token_roles=roles, token_group_size=6)
        models[name] = model = copy.deepcopy(vit)
        mmq.quantize(model, calib, cfg)
        with torch.no_grad():
            errors[name] = float((model(test) - ref).pow(2).mean() / ref.pow(2).mean())
    for block in models['tokens'].blocks:
        a, v = block.attn.av_matmul.a_quantizer, block.attn.av_matmul.b_quantizer
        for q, axis in ((a, -1), (v, -2)):
            assert isinstance(q, TokenQuantizer) and bool(q.calibrated)
            assert (q.feature_axis, q.group_size) == (axis, 6)
    assert isinstance(models['static'].blocks[0].attn.av_matmul.b_quantizer, UniformQuantizer)
    assert errors['tokens'] < 0.8 * errors['static'], errors
    # v (B, heads, 16 tokens, d): each channel column's tokens in groups of 6, 6, 4.
    v = models['tokens'].blocks[0].attn.av_matmul.b_quantizer
    x = torch.randn(1, 2, 16, 16) * torch.logspace(-1, 1, 16).view(1, 1, 16, 1)
    column = v(x)[..., 3]
    assert torch.equal(column, token_fake_quant(x[..., 3], v.clip, 3, -1, 6))
    assert torch.equal(column[..., 12:], token_fake_quant(x[..., 12:, 3], v.clip, 3))
    path = str(tmp_path / 'q.pth')
    cfg = dict(FAST_QUANT, a_bits=3, token_roles=five, token_group_size=6)
    mmq.save_quantized_state(models['tokens'], path, QuantConfig(**cfg))  # mislabelled
    with pytest.raises(ValueError, match='does not describe it'):
        mmq.load_quantized_state(copy.deepcopy(vit), path)


def test_post_gelu_token_role_replaces_the_shifted_log_quantizer():
    """'post_gelu' in token_roles gives fc2's input a (grouped) TokenQuantizer, no shift to
    fold, after MR too (post-ReLU); the calibrated ViT stays close to float."""
    roles = TOKENS + ['post_gelu']
    cfg = QuantConfig(**FAST_QUANT, token_roles=roles, token_group_size=4)
    for q in (cfg.post_gelu(), cfg.post_relu()):
        assert isinstance(q, TokenQuantizer) and q.group_size == 4 and q.feature_axis == -1
    vit, calib, test = _vit_and_images()
    model = copy.deepcopy(vit)
    report = mmq.quantize(model, calib, dict(FAST_QUANT, token_roles=roles))
    for block in model.blocks:
        q = block.mlp.fc2.input_quantizer
        assert isinstance(q, TokenQuantizer) and bool(q.calibrated) and q.group_size is None
    fc2 = [layer for unit in report['units'] for layer in unit.get('layers', [])
           if layer['name'].endswith('fc2')]
    assert len(fc2) == 2 and not any(layer['gelu_shift_folded'] for layer in fc2)
    with torch.no_grad():
        ref, out = vit(test), model(test)
    assert float((out - ref).pow(2).mean() / ref.pow(2).mean()) < 0.5


@pytest.mark.parametrize('kernel,group', [(1, None), (3, 8), (3, None)])
def test_conv_inputs_per_pixel(kernel, group):
    """'other' in token_roles quantizes a Conv2d input per pixel (its channels, in groups):
    forward equals per-pixel quantization, calibration's pixel-major patch rows see exactly
    those groups and reproduce the convolution, and the searched layer beats a static
    per-tensor input on pixels of very different sizes."""
    g = torch.Generator().manual_seed(4)
    conv = torch.nn.Conv2d(16, 8, kernel, padding=kernel // 2)
    x = torch.randn(2, 16, 6, 6, generator=g) * torch.logspace(-1, 1, 36).view(1, 1, 6, 6)
    cfg = QuantConfig(**FAST_QUANT, token_roles=['other'], token_group_size=group)
    layers = {}
    for name, qcfg in (('pixel', cfg), ('static', QuantConfig(**FAST_QUANT))):
        layer = QuantConv2d.from_float(copy.deepcopy(conv), qcfg.weight(),
                                       qcfg.activation(pixel_channels=16))
        rows = layer.sample_inputs((x, ), 10**6, torch.Generator().manual_seed(0))
        solve(layer.calibration_problem(rows), qcfg.make_calibrator, rounds=1,
              b_is_weight=True)
        layers[name] = layer
    layer, q = layers['pixel'], layers['pixel'].input_quantizer
    assert isinstance(q, TokenQuantizer) and q.group_size == (group or 16)
    with torch.no_grad():
        ref = conv(x)
        manual = token_fake_quant(x.movedim(1, -1), q.clip, 4, -1, group or 16).movedim(-1, 1)
        assert torch.equal(layer.quantize_input(x), manual)
        # Pixel-major rows: quantizing the rows is quantizing the pixels, then unfolding.
        rows = layer._patch_rows(x, pixel_major=True)
        assert torch.equal(q(rows), layer._patch_rows(manual, pixel_major=True))
        problem = layer.calibration_problem(rows)
        out = problem.op(rows, problem.b).reshape(2, 6, 6, 8).permute(0, 3, 1, 2)
        assert torch.allclose(out + conv.bias.view(1, -1, 1, 1), ref, atol=1e-4)
        errors = {k: float((m(x) - ref).pow(2).mean()) for k, m in layers.items()}
    assert errors['pixel'] < 0.5 * errors['static'], errors


def test_per_pixel_conv_output_keeps_the_input_memory_format():
    """A per-pixel quantized conv input goes back to the caller's memory format, so the
    conv's output does too: mmcv's CPU RoIAlign reads a channels-last FPN output as if it
    were contiguous (a per-pixel quantized neck once gave every RoI garbage features and the
    detector ~0 AP)."""
    from mmcv.ops import RoIAlign
    g = torch.Generator().manual_seed(6)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(2, 16, 12, 12, generator=g)
    cfg = QuantConfig(**FAST_QUANT, token_roles=['other'], token_group_size=8)
    layer = QuantConv2d.from_float(conv, cfg.weight(), cfg.activation(pixel_channels=16))
    rows = layer.sample_inputs((x, ), 10**6, torch.Generator().manual_seed(0))
    solve(layer.calibration_problem(rows), cfg.make_calibrator, rounds=1, b_is_weight=True)
    rois = torch.tensor([[0, 1.0, 1.0, 9.0, 7.0], [1, 2.0, 0.5, 11.0, 11.0]])
    roi_align = RoIAlign((3, 3), 1.0, 0, aligned=True)
    with torch.no_grad():
        y = layer(x)
        assert y.is_contiguous()
        assert torch.equal(roi_align(y, rois), roi_align(y.contiguous(), rois))
        y_last = layer(x.contiguous(memory_format=torch.channels_last))
    assert y_last.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y_last, y, atol=1e-5)


def test_compiled_token_fake_quant_and_clip_search_equal_eager_at_every_width(monkeypatch):
    """The clip search's candidates and large no-autograd passes run through one compiled
    kernel; it gives exactly the autograd (straight-through) path's values and the same
    chosen clips as eager, at 3, 4 and 8 bits in one process (a compiled 4-bit call after a
    3-bit one once reused the 3-bit grid), whole tokens and partial groups alike."""
    from mmq.quantizers import fused_scores as fs
    if not fs.compile_enabled():
        pytest.skip('compiled kernels disabled (MMQ_COMPILE=0)')
    x = _outlier_tokens(rows=1200, dim=60)
    clips = torch.linspace(0.3, 1.0, 15).view(15, 1, 1)
    calls = []
    run = fs._run
    monkeypatch.setattr(fs, '_run', lambda eager, *a: calls.append(eager) or run(eager, *a))
    for bits, group, fz in itertools.product((3, 4, 8), (None, 16), (False, True)):
        with torch.no_grad():
            fused = token_fake_quant(x.unsqueeze(0), clips, bits, -1, group, fz)
        straight = token_fake_quant(x.unsqueeze(0).requires_grad_(True), clips, bits, -1,
                                    group, fz)
        assert torch.equal(fused, straight.detach())
        searched = fpcs_token(x, bits, group_size=group, float_zero_point=fz).params
        monkeypatch.setenv('MMQ_COMPILE', '0')
        assert torch.equal(fpcs_token(x, bits, group_size=group, float_zero_point=fz).params,
                           searched)
        monkeypatch.delenv('MMQ_COMPILE')
    # the compiled paths really ran, for both grids
    assert fs.token_fake_quant_eager in calls and fs.token_fake_quant_offset_eager in calls


def test_float_zero_point_keeps_each_groups_extremes_and_lowers_the_error():
    """``zero_point='float'``: every group's grid runs from its (clipped) minimum to its
    maximum, so both are kept exactly and every output lies on that grid; on groups of 8
    Gaussian features at 4 bits that is more than 0.8 dB over the integer zero point (whose
    grid shifts by up to half a step), gradients reach ``x`` and the clip, and bad values are
    refused."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(512, 64, generator=g)
    out = token_fake_quant(x, torch.tensor(1.0), 4, -1, 8, True)
    groups, qgroups = x.view(512, 8, 8), out.view(512, 8, 8)
    assert torch.allclose(qgroups.amin(-1), groups.amin(-1), atol=1e-6)
    assert torch.allclose(qgroups.amax(-1), groups.amax(-1), atol=1e-6)
    lo = groups.amin(-1, keepdim=True)
    steps = (qgroups - lo) / ((groups.amax(-1, keepdim=True) - lo) / 15)
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    integer = token_fake_quant(x, torch.tensor(1.0), 4, -1, 8)
    assert sqnr_db(x, out) > sqnr_db(x, integer) + 0.8, (sqnr_db(x, out), sqnr_db(x, integer))
    xg, clip = x.clone().requires_grad_(True), torch.tensor(0.9, requires_grad=True)
    token_fake_quant(xg, clip, 4, -1, 8, True).pow(2).sum().backward()
    assert xg.grad.abs().sum() > 0 and torch.isfinite(clip.grad) and clip.grad != 0
    q = TokenQuantizer(4, group_size=8, zero_point='float')
    FPCSCalibrator()(q, x)
    assert q.integer_scale(x) is None and 'float' in repr(q)
    with pytest.raises(ValueError, match='zero_point'):
        TokenQuantizer(4, zero_point='half')
    with pytest.raises(ValueError, match='token_zero_point needs quant_cfg.token_roles'):
        QuantConfig(token_zero_point='float')


def test_float_zero_point_reaches_every_token_quantizer_and_is_saved(tmp_path):
    """``token_zero_point='float'`` reaches every token quantizer of a calibrated ViT, beats
    the integer zero point on held-out images (everything but the token roles at 8 bits, so
    their error dominates), reloads bit-identically, and a state saved under a quant_cfg with
    the integer zero point is refused."""
    vit, calib, test = _vit_and_images()
    with torch.no_grad():
        ref = vit(test)
    errors, models = {}, {}
    eight = dict(w_bits=8, role_bits=dict(v=8, post_softmax=8, post_gelu=8, other=8))
    for zero_point in ('integer', 'float'):
        cfg = dict(FAST_QUANT, a_bits=3, token_roles=TOKENS, token_group_size=4,
                   token_zero_point=zero_point, **eight)
        models[zero_point] = model = copy.deepcopy(vit)
        mmq.quantize(model, calib, cfg)
        with torch.no_grad():
            errors[zero_point] = float((model(test) - ref).pow(2).mean() / ref.pow(2).mean())
    tokens = [m for m in models['float'].modules() if isinstance(m, TokenQuantizer)]
    assert len(tokens) == 10 and all(q.float_zero_point for q in tokens)
    assert errors['float'] < 0.7 * errors['integer'], errors
    path = str(tmp_path / 'q.pth')
    mmq.save_quantized_state(models['float'], path, QuantConfig(**cfg))
    fresh = copy.deepcopy(vit)
    mmq.load_quantized_state(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(test), models['float'](test))
    mmq.save_quantized_state(models['float'], path,
                             QuantConfig(**dict(cfg, token_zero_point='integer')))
    with pytest.raises(ValueError, match='does not describe it'):
        mmq.load_quantized_state(copy.deepcopy(vit), path)
