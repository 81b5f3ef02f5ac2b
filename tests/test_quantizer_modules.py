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
