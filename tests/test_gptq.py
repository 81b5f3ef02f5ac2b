"""Error-compensated weight rounding (``quant_cfg.weight_rounding='gptq'``)."""
import copy

import pytest
import torch

import mmq
from mmq.config import QuantConfig
from mmq.quantizers import MinMaxCalibrator, UniformQuantizer
from mmq.quantizers.gptq import gptq_codes, gptq_rounding, output_error
from .conftest import FAST_QUANT, tiny_vit


def _problem(out_f: int = 24, in_f: int = 48, tokens: int = 512, bits: int = 4, seed: int = 0):
    """A weight, its per-channel MinMax grid and correlated inputs (their Hessian)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    mix = torch.randn(in_f, in_f, generator=g) / in_f**0.5 + torch.eye(in_f)
    x = torch.randn(tokens, in_f, generator=g) @ mix * torch.linspace(0.2, 3, in_f)
    q = UniformQuantizer(bits, ch_axis=0)
    MinMaxCalibrator()(q, w)
    return w, x, q


def _dequant(q: UniformQuantizer, codes: torch.Tensor) -> torch.Tensor:
    return (codes - q.zero_point) * q.scale


def test_gptq_lowers_the_output_error_on_its_grid():
    """On correlated inputs the compensated codes lie on the same grid and give a clearly
    lower output error than rounding to nearest, for 3, 4 and 8 bits."""
    for bits in (3, 4, 8):
        w, x, q = _problem(bits=bits)
        h = x.T @ x
        codes = gptq_codes(w, h, q.scale, q.zero_point, bits)
        assert torch.equal(codes, codes.round()) and codes.min() >= 0
        assert codes.max() <= 2**bits - 1
        nearest = output_error(w, q(w), h)
        gptq = output_error(w, _dequant(q, codes), h)
        assert gptq < 0.8 * nearest, (bits, gptq, nearest)
        # ... measured directly on the inputs as well.
        direct = float((x @ (w - _dequant(q, codes)).T).pow(2).sum())
        assert direct == pytest.approx(gptq, rel=1e-3)


def test_gptq_rounds_to_nearest_when_the_inputs_are_uncorrelated():
    """With a diagonal Hessian no column's error can be compensated by another: GPTQ's codes
    are exactly round-to-nearest (a compensation bug would move them)."""
    w, _, q = _problem()
    h = torch.diag(torch.linspace(0.5, 4.0, w.shape[1]))
    codes = gptq_codes(w, h, q.scale, q.zero_point, q.bits)
    assert torch.equal(_dequant(q, codes), q(w))


def test_rounding_offsets_make_the_quantizer_yield_the_codes():
    """``set_rounding`` with the offsets reproduces GPTQ's codes exactly, the float weight
    untouched, clipped weights included (offsets stay in int8)."""
    w, x, q = _problem(bits=8)
    w[0, 0] = 50 * q.scale[0, 0] * 255  # far beyond the grid: clamped to its top
    offsets, nearest, gptq = gptq_rounding(w, x.T @ x, q.scale, q.zero_point, q.bits)
    codes = gptq_codes(w, x.T @ x, q.scale, q.zero_point, q.bits)
    before = w.clone()
    q.set_rounding(offsets)
    assert torch.equal(q(w), _dequant(q, codes)) and torch.equal(w, before)
    assert q.rounding.dtype == torch.int8 and int(q.rounding.min()) == -128


@pytest.mark.parametrize('target', ['quantized', 'float'])
def test_gptq_rounding_in_calibration_lowers_the_error_and_survives_save_and_load(
        tmp_path, target):
    """Calibrating a tiny ViT (W4A8, so that weights dominate) with
    ``weight_rounding='gptq'``: block Linears get compensated codes where they lower the
    reported output error, block 0's output on held-out images is clearly closer to float than
    with the same grids rounded to nearest, its float weights and grids are those of a
    nearest-rounding calibration, and a saved state reloads bit-identically."""
    vit = tiny_vit(32, 8, 32, 2, 4)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(8)]
    test = torch.randn(16, 3, 32, 32, generator=g)
    cfg = dict(FAST_QUANT, a_bits=8, weight_rounding='gptq', gptq_target=target)
    model = copy.deepcopy(vit)
    report = mmq.quantize(model, calib, cfg)
    rounded = [u for u in report['units'] if 'weight_rounding' in u]
    assert any(u['unit'] == 'patch_embed' for u in rounded)
    blocks = [u for u in rounded if u['unit'].startswith('blocks')]
    assert len(blocks) == 2
    for unit in blocks:
        assert len(unit['weight_rounding']) == 4  # qkv, proj, fc1, fc2
    layers = [layer for unit in rounded for layer in unit['weight_rounding']]
    for layer in layers:
        assert layer['kept'] == (layer['output_error_gptq'] < layer['output_error_nearest'])
    # fc2's post-GELU inputs are strongly correlated: compensation pays most there.
    for layer in layers:
        if layer['name'].endswith('fc2'):
            assert layer['output_error_gptq'] < 0.8 * layer['output_error_nearest']
    # The patch embedding (pixels in) saw the same inputs either way: its float weight and
    # grid are nearest rounding's, its codes GPTQ's.
    twin = copy.deepcopy(vit)
    mmq.quantize(twin, calib, dict(cfg, weight_rounding='nearest'))
    embed, embed_twin = model.patch_embed.proj, twin.patch_embed.proj
    assert torch.equal(embed.weight, embed_twin.weight)
    assert torch.equal(embed.weight_quantizer.scale, embed_twin.weight_quantizer.scale)
    assert embed.weight_quantizer.rounding.shape == embed.weight.shape
    # On held-out images block 0's output is clearly closer to float than with the same
    # grids rounded to nearest.
    nearest = copy.deepcopy(model.blocks[0])
    for m in nearest.modules():
        if isinstance(m, UniformQuantizer):
            m.rounding = torch.empty(0)
    with torch.no_grad():
        x = vit._pos_embed(vit.patch_embed(test))
        ref = vit.blocks[0](x)
        err_gptq = float((model.blocks[0](x) - ref).pow(2).mean())
        err_nearest = float((nearest(x) - ref).pow(2).mean())
    assert err_gptq < 0.8 * err_nearest
    path = str(tmp_path / 'q.pth')
    mmq.save_quantized_state(model, path, QuantConfig(**cfg))
    fresh = copy.deepcopy(vit)
    mmq.load_quantized_state(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(test), model(test))


@pytest.mark.parametrize('bad', ['gptq2', None])
def test_weight_rounding_is_checked(bad):
    with pytest.raises(ValueError, match='weight_rounding'):
        QuantConfig(weight_rounding=bad)


@pytest.mark.parametrize('bad', [0, -0.1, 2.0, True, 'x'])
def test_gptq_damp_is_checked(bad):
    with pytest.raises(ValueError, match='gptq_damp'):
        QuantConfig(gptq_damp=bad)


def test_gptq_target_is_checked():
    with pytest.raises(ValueError, match='gptq_target'):
        QuantConfig(gptq_target='output')
    with pytest.raises(ValueError, match='rounding_init'):
        QuantConfig(reconstruct=dict(rounding_init='gptq'))


def test_conv_weight_input_rows_are_what_the_flattened_weight_multiplies():
    """GPTQ's Hessian of a convolution comes from these rows: with them, the flattened weight
    reproduces the convolution (strided, padded, dilated)."""
    from torch import nn
    from mmq.models.quant_conv import QuantConv2d
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, dilation=2, bias=False)
    layer = QuantConv2d.from_float(conv, None, None)
    x = torch.randn(2, 3, 11, 9, generator=g)
    with torch.no_grad():
        out = layer(x)
        rows = layer.weight_input_rows(x) @ layer.weight.reshape(5, -1).T
    assert torch.allclose(rows, out.permute(0, 2, 3, 1).reshape(-1, 5), atol=1e-5)


def test_float_target_absorbs_the_input_quantization_error():
    """``gptq_target='float'``: the reported error is the direct ``||X_q W_q^T - X W^T||^2``,
    and when the quantized inputs carry a systematic error (here a shrunk, coarsely rounded
    copy of the float inputs) the codes fitted to the float output beat GPTQ's own
    objective on it."""
    from mmq.quantizers.gptq import float_target_error
    w, x, q = _problem(bits=4)
    xq = (0.8 * x / 0.25).round() * 0.25
    h, c, f = xq.T @ xq, xq.T @ x, x.T @ x
    offsets_f, nearest_f, err_f = gptq_rounding(w, h, q.scale, q.zero_point, q.bits,
                                                cross=c, float_hessian=f)
    offsets_q, _, _ = gptq_rounding(w, h, q.scale, q.zero_point, q.bits)
    wq_f = _dequant(q, torch.floor(w / q.scale) + offsets_f.float() + q.zero_point)
    wq_q = _dequant(q, torch.floor(w / q.scale) + offsets_q.float() + q.zero_point)
    direct = float((xq @ wq_f.T - x @ w.T).pow(2).sum())
    assert err_f == pytest.approx(direct, rel=1e-3)
    assert nearest_f == pytest.approx(float((xq @ q(w).T - x @ w.T).pow(2).sum()), rel=1e-3)
    assert err_f < 0.5 * float_target_error(w, wq_q, h, c, f)
    assert err_f < 0.5 * nearest_f


def test_adaround_can_start_from_the_calibrated_codes():
    """``reconstruct.rounding_init='calibrated'``: hardened at the start, the learned
    rounding gives the calibration's (GPTQ) codes back, codes beyond floor / ceil of the
    float weight included; the soft weight lies between the float weight and those codes."""
    from mmq.quantizers.adaround_quantizer import AdaRoundQuantizer
    w, x, q = _problem(bits=3)
    offsets, _, _ = gptq_rounding(w, x.T @ x, q.scale, q.zero_point, q.bits)
    q.set_rounding(offsets)
    target = q(w)
    start = q.quantize(w) - q.zero_point
    far = ((start - w / q.scale).abs() > 1) & (start > -q.zero_point) & (
        start < 2**q.bits - 1 - q.zero_point)
    assert far.any()  # GPTQ moved some weights by more than one step
    rounder = AdaRoundQuantizer(q, w, start)
    assert torch.equal(rounder(w, hard=True), target)
    soft = rounder(w)
    inside = ~far
    lo, hi = torch.minimum(w, target), torch.maximum(w, target)
    assert ((soft >= lo - 1e-6) & (soft <= hi + 1e-6))[inside].all()


def test_reconstruction_from_the_gptq_codes_runs_and_reports():
    """GPTQ calibration, then block reconstruction started from its codes: every block is
    reported, and a block kept calibrated still holds GPTQ's codes."""
    vit = tiny_vit(32, 8, 32, 2, 4)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]
    model = copy.deepcopy(vit)
    report = mmq.quantize(model, calib, dict(
        FAST_QUANT, weight_rounding='gptq', stages=['calibrate', 'reconstruct'],
        reconstruct=dict(iters=4, batch=2, rounding_init='calibrated')))
    rec = [u for u in report['units'] if u.get('stage') == 'reconstruct']
    assert {u['unit'] for u in rec} >= {'blocks.0', 'blocks.1'}
    for u in rec:
        assert u['loss_after'] <= u['loss_before']
        assert isinstance(u['seconds'], float) and u['seconds'] > 0
    fc1 = model.blocks[0].mlp.fc1.weight_quantizer
    assert fc1.rounding.numel() == model.blocks[0].mlp.fc1.weight.numel()
