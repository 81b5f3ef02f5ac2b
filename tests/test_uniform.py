"""Known answers for the uniform quantizer functions."""
import pytest
import torch

from mmq.quantizers import (minmax_params, percentile_params, uniform_dequantize,
                            uniform_fake_quant, uniform_quantize)


def test_grid_values_round_trip_exactly():
    scale, zp = torch.tensor(0.125), torch.tensor(3.0)  # 0.125 is exact in binary
    x = (torch.arange(16.0) - 3) * 0.125
    codes = uniform_quantize(x, scale, zp, 4)
    assert torch.equal(codes, torch.arange(16.0))
    assert torch.equal(uniform_dequantize(codes, scale, zp), x)


@pytest.mark.parametrize('bits', [2, 3, 4, 6, 8])
def test_codes_stay_in_range(bits):
    x = torch.randn(1000) * 10
    scale, zp = minmax_params(x[:10], bits)  # a range far too small: most values clip
    codes = uniform_quantize(x, scale, zp, bits)
    assert codes.min() == 0 and codes.max() == 2**bits - 1
    assert torch.equal(codes, codes.round())


def test_minmax_covers_range_and_keeps_zero_exact():
    x = torch.tensor([-1.0, 0.0, 0.5, 3.0])
    scale, zp = minmax_params(x, 8)
    assert float(scale) == pytest.approx(4.0 / 255)
    xq = uniform_fake_quant(x, scale, zp, 8)
    assert float(xq[1]) == 0.0  # zero is on the grid
    assert (xq - x).abs().max() <= scale / 2 + 1e-7


def test_per_channel_and_per_head_shapes_and_independence():
    w = torch.randn(6, 10)
    s, z = minmax_params(w, 4, ch_axis=0)
    assert s.shape == (6, 1) and z.shape == (6, 1)
    w2 = w.clone()
    w2[1:] *= 5  # other channels change ...
    s2, z2 = minmax_params(w2, 4, ch_axis=0)
    assert torch.equal(s2[0], s[0]) and torch.equal(z2[0], z[0])  # ... channel 0 does not
    q = torch.randn(2, 3, 7, 8)  # (B, heads, N, d)
    s, z = minmax_params(q, 4, ch_axis=1)
    assert s.shape == (1, 3, 1, 1)
    assert uniform_fake_quant(q, s, z, 4).shape == q.shape
    s, z = percentile_params(q, 4, ch_axis=1, lower=0.01, upper=0.99)
    assert s.shape == (1, 3, 1, 1)


def test_percentile_clips_outliers():
    x = torch.cat([torch.linspace(-1, 1, 10001), torch.tensor([100.0])])
    s_mm, _ = minmax_params(x, 4)
    s_p, _ = percentile_params(x, 4, lower=0.0, upper=0.999)
    assert float(s_p) < float(s_mm) / 20


def test_ste_gradient_identity_inside_zero_outside():
    scale, zp = torch.tensor(0.1), torch.tensor(8.0)  # range [-0.8, 0.7]
    x = torch.tensor([-2.0, -0.33, 0.0, 0.41, 0.64, 3.0], requires_grad=True)
    uniform_fake_quant(x, scale, zp, 4).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize('bits', [1, 9, 16, 3.5, True, '4'])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match='bits='):
        uniform_quantize(torch.randn(4), torch.tensor(0.1), torch.tensor(0.0), bits)


def test_bad_scale_nonfinite_and_shapes():
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match='scale must be > 0'):
        uniform_quantize(x, torch.tensor(0.0), torch.tensor(0.0), 4)
    with pytest.raises(ValueError, match='scale must be > 0'):
        uniform_quantize(x, torch.tensor(-1.0), torch.tensor(0.0), 4)
    with pytest.raises(ValueError, match='non-finite'):
        uniform_quantize(torch.tensor([1.0, float('nan')]), torch.tensor(1.0),
                         torch.tensor(0.0), 4)
    with pytest.raises(ValueError, match='non-finite'):
        minmax_params(torch.tensor([1.0, float('inf')]), 4)
    with pytest.raises(ValueError, match='does not broadcast'):
        uniform_quantize(x, torch.ones(3, 1), torch.zeros(3, 1), 4)
    with pytest.raises(ValueError, match='lower'):
        percentile_params(x, 4, lower=0.9, upper=0.1)
