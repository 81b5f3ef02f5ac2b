"""Quantizer modules: modes, calibrators, state_dict round trips, config errors."""
import pytest
import torch
from torch.nn import functional as F

from mmq import CALIBRATORS, QUANTIZERS
from mmq.quantizers import (GELU_SHIFT, AdaLogQuantizer, FPCSCalibrator, Log2Quantizer,
                            LogSqrt2Quantizer, MinMaxCalibrator, PercentileCalibrator,
                            UniformQuantizer, fold_shift_into_bias, output_mse)


def test_uncalibrated_and_disabled_pass_through():
    x = torch.randn(4, 8)
    q = UniformQuantizer(4)
    assert torch.equal(q(x), x)
    MinMaxCalibrator()(q, x)
    assert not torch.equal(q(x), x)
    q.enabled = False
    assert torch.equal(q(x), x)


@pytest.mark.parametrize('calibrator', [
    dict(type='MinMaxCalibrator'),
    dict(type='PercentileCalibrator', lower=0.001, upper=0.999),
    dict(type='FPCSCalibrator', role='weight')
])
def test_uniform_state_dict_round_trip_is_exact(calibrator):
    w = torch.randn(16, 32)
    q = UniformQuantizer(3, ch_axis=0)
    CALIBRATORS.build(calibrator)(q, w)
    assert q.scale.shape == (16, 1)
    fresh = QUANTIZERS.build(dict(type='UniformQuantizer', bits=3, ch_axis=0))
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(w), q(w)) and bool(fresh.calibrated)


def test_adalog_state_dict_round_trip_and_table_default():
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(2, 3, 16, 16) * 3, dim=-1)
    q = AdaLogQuantizer(4, fixed_scale=1.0)
    FPCSCalibrator()(q, attn)
    assert float(q.scale) == 1.0 and 10 <= int(q.q) <= 137
    fresh = AdaLogQuantizer(4, fixed_scale=1.0)
    fresh.load_state_dict(q.state_dict())
    fresh.eval(), q.eval()
    assert torch.equal(fresh(attn), q(attn))
    # Eval mode uses the integer-table path, train mode the exact differentiable one.
    codes, mask = q.quantize(attn)
    assert torch.equal(q(attn), q.dequantize(codes, mask, table=True))
    q.train()
    torch.testing.assert_close(q(attn), q.dequantize(codes, mask, table=False), rtol=1e-6, atol=0)


def test_post_gelu_shift_folded_matches_shifted():
    torch.manual_seed(0)
    x = F.gelu(torch.randn(128, 32) * 2)
    w, b = torch.randn(8, 32) * 0.1, torch.randn(8)
    shifted = AdaLogQuantizer(4, shift=GELU_SHIFT)
    FPCSCalibrator()(shifted, x, output_mse(lambda xq: xq @ w.t(), x @ w.t()))
    folded = AdaLogQuantizer(4, shift=GELU_SHIFT)
    folded.load_state_dict(shifted.state_dict())
    folded.shift_folded.fill_(True)  # a buffer: saved states remember the fold
    torch.testing.assert_close(
        F.linear(folded(x), w, fold_shift_into_bias(w, b, GELU_SHIFT)),
        F.linear(shifted(x), w, b), rtol=0, atol=1e-5)
    assert folded(x).min() >= 0  # the deployed input is non-negative


def test_baseline_log_quantizers_and_fixed_zero_point():
    x = torch.rand(1000)**4
    for cls in (Log2Quantizer, LogSqrt2Quantizer):
        q = cls(4)
        PercentileCalibrator(upper=1.0)(q, x)
        assert float(q.scale) == pytest.approx(float(x.max()))
        assert q.bases == (1, )
    relu = UniformQuantizer(4, fixed_zero_point=0)
    FPCSCalibrator()(relu, torch.relu(torch.randn(1000)))
    assert float(relu.zero_point) == 0.0


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match='bits=1'):
        UniformQuantizer(1)
    with pytest.raises(ValueError, match='bits=12'):
        AdaLogQuantizer(12)
    with pytest.raises(ValueError, match="dequant='fast'"):
        AdaLogQuantizer(4, dequant='fast')
    with pytest.raises(ValueError, match='fixed_scale=0'):
        AdaLogQuantizer(4, fixed_scale=0)
    with pytest.raises(ValueError, match="role='bias'"):
        FPCSCalibrator(role='bias')
    with pytest.raises(ValueError, match='non-finite'):
        MinMaxCalibrator()(UniformQuantizer(4), torch.tensor([1.0, float('inf')]))
    with pytest.raises(ValueError, match='scale must be > 0'):
        UniformQuantizer(4).set_params(torch.tensor([0.0]), torch.tensor([0.0]))
    with pytest.raises(TypeError, match='cannot calibrate'):
        MinMaxCalibrator()(torch.nn.Identity(), torch.randn(3))


def test_matmul_query_subsample_keeps_exact_output_rows():
    """Sampled query rows of an attention map give exactly those rows of ``a @ b``."""
    from mmq.models.quant_matmul import QuantMatMul
    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(6, 3, 40, 40), dim=-1)
    v = torch.randn(6, 3, 40, 8)
    mm = QuantMatMul(None, None)
    a, b = mm.sample_inputs((attn, v), 4, torch.Generator().manual_seed(0), queries=10)
    assert a.shape == (4, 3, 10, 40) and b.shape == (4, 3, 40, 8)
    full = attn @ v
    out = a @ b
    for i in range(4):  # each sampled map and row is a map and row of the input, all heads
        j = next(j for j in range(6) if torch.equal(b[i], v[j]))
        rows = [next(r for r in range(40) if torch.equal(a[i, 0, k], attn[j, 0, r]))
                for k in range(10)]
        assert len(set(rows)) == 10
        assert torch.allclose(out[i], full[j][:, rows])
    whole, _ = mm.sample_inputs((attn, v), 4, torch.Generator().manual_seed(0), queries=40)
    assert whole.shape == (4, 3, 40, 40)


def test_outlier_aware_sampling_always_keeps_the_largest_rows():
    from mmq.models.quant_linear import sample_rows
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 16, generator=g)
    big = torch.tensor([3, 500, 999])
    x[big] *= 100
    for seed in range(5):
        rows = sample_rows(x, 32, torch.Generator().manual_seed(seed), outliers=4)
        assert rows.shape == (32, 16)
        for i in big:  # every outlier row is in the sample, whatever the seed
            assert (rows == x[i]).all(dim=1).any()
        assert len({tuple(r.tolist()) for r in rows}) == 32  # no row twice
    plain = sample_rows(x, 32, torch.Generator().manual_seed(1))
    again = sample_rows(x, 32, torch.Generator().manual_seed(1))
    assert torch.equal(plain, again)  # seeded


def test_adalog_bases_published_up_to_4_bits_finer_beyond():
    for bits in (2, 3, 4):
        q = AdaLogQuantizer(bits)
        assert q.r == 37 and q.bases == tuple(range(10, 138)) and int(q.q) == 37
    for bits, r in ((5, 37), (6, 74), (7, 148), (8, 148)):
        q = AdaLogQuantizer(bits)
        assert q.r == r and q.bases[0] == 1 and int(q.q) == r  # q = r is log2
        # The largest base is the published one and every published base is offered.
        assert q.bases[-1] * 37 == 137 * r
        assert set(q.bases) >= {p * r // 37 for p in range(10, 138)}
        published = AdaLogQuantizer(bits, base_range='published')
        assert published.r == 37 and published.bases == tuple(range(10, 138))
    # The config option reaches the quantizers it builds; a bad value is named.
    from mmq.config.quant_config import QuantConfig
    assert QuantConfig(a_bits=6).post_gelu().r == 74
    assert QuantConfig(a_bits=6, adalog_base_range='published').post_softmax().r == 37
    with pytest.raises(ValueError, match="adalog_base_range='fine'"):
        QuantConfig(adalog_base_range='fine')


def test_adalog_finer_bases_at_6_bits_reach_uniform():
    """With more codes than 4 bits the published smallest base, 2^(10/37), caps AdaLog's
    resolution: the finer bases cut the post-GELU output error several-fold, to within 25 %
    of uniform FPCS (it was 5x above)."""
    torch.manual_seed(0)
    x = F.gelu(torch.randn(512, 64) * 2)
    w = torch.randn(32, 64) * 0.1
    objective = output_mse(lambda xq: xq @ w.t(), x @ w.t())

    def loss(quantizer):
        FPCSCalibrator()(quantizer, x, objective)
        quantizer.eval()
        return float(((quantizer(x) - x) @ w.t()).pow(2).mean())

    fine = loss(AdaLogQuantizer(6, shift=GELU_SHIFT))
    coarse = loss(AdaLogQuantizer(6, shift=GELU_SHIFT, base_range='published'))
    uniform = loss(UniformQuantizer(6))
    assert fine < coarse / 3
    assert fine < uniform * 1.25


def test_adalog_state_keeps_its_base_denominator():
    torch.manual_seed(0)
    x = F.gelu(torch.randn(256, 32) * 2)
    q = AdaLogQuantizer(6, shift=GELU_SHIFT)
    FPCSCalibrator()(q, x)
    state = q.state_dict()
    assert int(state['base_denominator']) == 74
    fresh = AdaLogQuantizer(6, shift=GELU_SHIFT)
    fresh.load_state_dict(state)
    assert fresh.r == 74 and torch.equal(fresh.eval()(x), q.eval()(x))
    # A state saved before r was saved had r = 37 at every width: it loads as it was made.
    legacy = {k: v for k, v in state.items() if k != 'base_denominator'}
    legacy['q'] = torch.tensor(12)
    old = AdaLogQuantizer(6, shift=GELU_SHIFT)
    old.load_state_dict(legacy)
    assert old.r == 37 and 'base=2^(12/37)' in repr(old)
    for cls in (Log2Quantizer, LogSqrt2Quantizer):
        fixed = cls(4)
        fixed.load_state_dict({k: v for k, v in fixed.state_dict().items()
                               if k != 'base_denominator'})
        assert fixed.r == cls(4).r
