"""Every QuantConfig option run end to end on a small ViT, each with its expected effect."""
import copy

import pytest
import torch

import mmq
from mmq.quantizers import AdaLogQuantizer, Log2Quantizer, LogSqrt2Quantizer, UniformQuantizer
from .conftest import FAST_QUANT, tiny_vit


@pytest.fixture(scope='module')
def setup():
    vit = tiny_vit(32, 8, 32, 2, 4)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]
    test = torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = vit(test)
    return vit, calib, test, ref


def _run(setup, **kw):
    vit, calib, test, ref = setup
    model = copy.deepcopy(vit)
    mmq.quantize(model, calib, dict(FAST_QUANT, **kw))
    with torch.no_grad():
        out = model(test)
    return model, out, float((out - ref).pow(2).mean() / ref.pow(2).mean())


def test_fold_gelu_shift_on_or_off_gives_the_same_function(setup):
    """Bias reparameterization is exact: folded or not, the same quantized outputs."""
    _, folded, _ = _run(setup, fold_gelu_shift=True)
    model, unfolded, _ = _run(setup, fold_gelu_shift=False)
    assert not bool(model.blocks[0].mlp.fc2.input_quantizer.shift_folded)
    torch.testing.assert_close(folded, unfolded, rtol=1e-4, atol=1e-5)


def test_table_and_exact_dequantization_stay_close(setup):
    """The same calibrated model evaluated with the integer-table kernel and with the exact
    2^(-kq/r): they differ by at most half a mantissa step per value, so the network outputs
    agree closely but not exactly; the option itself reaches the quantizers."""
    from mmq.quantizers import LogQuantizer
    vit, calib, test, ref = setup
    model, table, _ = _run(setup, dequant='table')
    logs = [m for m in model.modules() if isinstance(m, LogQuantizer)]
    assert logs and all(q.dequant == 'table' for q in logs)
    for q in logs:
        q.q.fill_(50)  # a base whose mantissas are not exact in the table (base 2 would be)
    with torch.no_grad():
        table = model(test)
    for q in logs:
        q.dequant = 'exact'
    with torch.no_grad():
        exact = model(test)
    diff = float((table - exact).abs().max())
    assert 0 < diff < 0.1 * float((table - ref).abs().max() + ref.abs().max())
    exact_model, _, _ = _run(setup, dequant='exact')
    assert all(q.dequant == 'exact' for q in exact_model.modules()
               if isinstance(q, LogQuantizer))


@pytest.mark.parametrize('kind,cls', [('adalog', AdaLogQuantizer), ('log2', Log2Quantizer),
                                      ('logsqrt2', LogSqrt2Quantizer),
                                      ('uniform', UniformQuantizer)])
def test_power_law_quantizer_options_are_built_and_calibrated(setup, kind, cls):
    model, _, err = _run(setup, softmax=kind, gelu=kind)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert type(attn.av_matmul.a_quantizer) is cls and type(mlp.fc2.input_quantizer) is cls
    assert bool(attn.av_matmul.a_quantizer.calibrated)
    assert err < 0.5


def test_calibrators_run_and_differ(setup):
    """Each calibrator calibrates every quantizer and gives its own result. (Which is best is
    asserted on a trained detector, tests/test_demo.py: on this random-weight ViT, per-layer
    output MSE is not the network's error.)"""
    errors = {c: _run(setup, calibrator=c, softmax='uniform', gelu='uniform', w_bits=3,
                      a_bits=3)[2] for c in ('minmax', 'percentile', 'fpcs')}
    assert len(set(errors.values())) == 3, errors
    assert all(0 < e < 1 for e in errors.values()), errors


def test_ln_reparam_keeps_the_float_function_and_changes_the_quantized_one(setup):
    vit, calib, test, ref = setup
    on, out_on, _ = _run(setup, ln_reparam=True)
    off, out_off, _ = _run(setup, ln_reparam=False)
    assert not torch.equal(out_on, out_off)
    mmq.models.set_quant_enabled(on, False)
    with torch.no_grad():
        torch.testing.assert_close(on(test), ref, rtol=1e-4, atol=1e-4)


def test_searched_layernorm_ranges_keep_the_float_function_and_lower_the_channel_error(setup):
    """ln_reparam_ranges='search' changes the quantized model, not the float one; on rows with
    a few outlier tokens the searched per-channel ranges quantize each channel with less
    error than its min / max range does."""
    from mmq.calibration.block_calibration import _searched_ranges
    vit, calib, test, ref = setup
    searched, out_searched, _ = _run(setup, ln_reparam_ranges='search')
    _, out_minmax, _ = _run(setup, ln_reparam_ranges='minmax')
    assert not torch.equal(out_searched, out_minmax)
    mmq.models.set_quant_enabled(searched, False)
    with torch.no_grad():
        torch.testing.assert_close(searched(test), ref, rtol=1e-4, atol=1e-4)
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(2048, 16, generator=g)
    rows[:4] *= 50  # four high-norm tokens
    from mmq.quantizers.uniform import fake_quant_uniform, range_to_params

    def channel_error(lo, hi):
        scale, zp = range_to_params(lo, hi, 4)
        return (fake_quant_uniform(rows, scale, zp, 4) - rows).pow(2).mean(0)

    searched_error = channel_error(*_searched_ranges(rows, 4))
    minmax_error = channel_error(rows.amin(0), rows.amax(0))
    assert (searched_error <= minmax_error * 1.0001).all()
    assert searched_error.mean() < 0.95 * minmax_error.mean()  # measured 0.882 vs 0.955


def test_more_rounds_do_not_hurt(setup):
    _, _, one = _run(setup, rounds=1)
    _, _, three = _run(setup, rounds=3)
    assert three <= one * 1.1


def _spread_channels(vit, span: float, parts):
    """A copy of ``vit`` whose channels between two Linears of each block (``parts(block)``:
    the first, the first of its output rows involved, the second) are scaled by
    ``10^-span .. 10^span`` in a seeded random order, undone in the second's columns."""
    spread = copy.deepcopy(vit)
    with torch.no_grad():
        for block in spread.blocks:
            first, start, second = parts(block)
            n = second.in_features
            f = torch.logspace(-span, span, n)[torch.randperm(
                n, generator=torch.Generator().manual_seed(1))]
            first.weight[start:start + n] *= f.unsqueeze(1)
            first.bias[start:start + n] *= f
            second.weight /= f
    return spread


def _layer_sqnrs(report: dict, suffix: str) -> list:
    """The calibration report's SQNR of every layer whose name ends with ``suffix``."""
    return [layer['sqnr_db'] for unit in report['units'] for layer in unit['layers']
            if layer['name'].endswith(suffix)]


def test_proj_reparam_keeps_the_float_function_and_lowers_the_error_of_spread_channels(setup):
    """Attention-output reparameterization is exact in float (v rows, out_offset and proj
    fold together), and when proj's input channels differ widely in range (v rows scaled
    1/20..20 here, undone in proj) it lowers proj's quantized output error by far (measured
    6 dB -> 28 dB SQNR; the tiny random ViT's final output barely depends on proj)."""
    vit, calib, test, ref = setup
    spread = _spread_channels(vit, 1.3, lambda b: (b.attn.qkv, 2 * b.attn.proj.in_features,
                                                   b.attn.proj))
    sqnr = {}
    for on in (False, True):
        model = copy.deepcopy(spread)
        report = mmq.quantize(model, calib, dict(FAST_QUANT, w_bits=8, proj_reparam=on))
        assert bool(model.blocks[0].attn.out_offset.abs().sum() > 0) == on
        sqnr[on] = _layer_sqnrs(report, 'attn.proj')
        mmq.models.set_quant_enabled(model, False)
        with torch.no_grad():
            torch.testing.assert_close(model(test), ref, rtol=1e-4, atol=1e-4)
    assert len(sqnr[True]) == 2 and all(a > b + 10 for a, b in zip(sqnr[True], sqnr[False])), sqnr


def test_mlp_channel_sort_is_exact_and_lowers_the_grouped_fc2_input_error(setup):
    """Sorting the MLP's hidden channels by RMS is a permutation of fc1's rows and fc2's
    columns (the float function unchanged) and, with hidden channels of spread magnitudes
    scattered over fc2's token groups of 8, raises fc2's quantized output SQNR by far
    (measured 9.0 / 9.6 -> 18.9 / 18.9 dB over the two blocks)."""
    vit, calib, test, _ = setup
    spread = _spread_channels(vit, 1, lambda b: (b.mlp.fc1, 0, b.mlp.fc2))
    with torch.no_grad():
        ref = spread(test)
    cfg = dict(FAST_QUANT, w_bits=8, token_roles=['post_gelu'], token_group_size=8)
    sqnr = {}
    for on in (False, True):
        model = copy.deepcopy(spread)
        report = mmq.quantize(model, calib, dict(cfg, mlp_channel_sort=on))
        sqnr[on] = _layer_sqnrs(report, 'mlp.fc2')
        # fc2's columns permuted (fc1's rows alike: the float check below), else unchanged
        fc2, orig = model.blocks[0].mlp.fc2.weight.t(), spread.blocks[0].mlp.fc2.weight.t()
        match = (fc2.unsqueeze(1) == orig.unsqueeze(0)).all(-1).float().argmax(1)
        assert torch.equal(match.sort().values, torch.arange(len(match)))
        assert torch.equal(fc2, orig[match])
        assert torch.equal(match, torch.arange(len(match))) != on
        mmq.models.set_quant_enabled(model, False)
        with torch.no_grad():
            torch.testing.assert_close(model(test), ref, rtol=1e-4, atol=1e-4)
    assert len(sqnr[True]) == 2 and all(a > b + 5 for a, b in zip(sqnr[True], sqnr[False])), sqnr
    with pytest.raises(ValueError, match="'post_gelu' in quant_cfg.token_roles"):
        mmq.QuantConfig(token_roles=['ln_input'], token_group_size=8, mlp_channel_sort=True)
    with pytest.raises(ValueError, match='token_group_size'):
        mmq.QuantConfig(token_roles=['post_gelu'], mlp_channel_sort=True)
