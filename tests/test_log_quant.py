"""Known answers for the logarithmic (AdaLog, log2, log-sqrt2) quantizer functions."""
import math

import pytest
import torch
from torch.nn import functional as F

from mmq.quantizers import (ADALOG_R, GELU_SHIFT, fold_shift_into_bias, log_dequantize,
                            log_fake_quant, log_quantize, log_tables, minmax_params,
                            uniform_fake_quant)
from mmq.quantizers.log_quant import mantissa_levels


def power_law(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g)**8  # most mass near 0, a long tail to 1


@pytest.mark.parametrize('bits', [3, 4, 6])
@pytest.mark.parametrize('table', [True, False])
def test_adalog_q37_equals_log2(bits, table):
    x = power_law()
    one = torch.tensor(1.0)
    c37, m37 = log_quantize(x, one, bits, 37, ADALOG_R)
    c2, m2 = log_quantize(x, one, bits, 1, 1)
    assert torch.equal(c37, c2) and torch.equal(m37, m2)
    assert torch.equal(
        log_dequantize(c37, m37, one, bits, 37, ADALOG_R, table),
        log_dequantize(c2, m2, one, bits, 1, 1, table))


def test_tables_known_values():
    t1, t2 = log_tables(3, 37, 37)
    assert t1.tolist() == list(range(8)) and torch.all(t2 == 1)
    t1, t2 = log_tables(3, 18, 37)  # base 2^(18/37)
    assert t1[3] == 1  # 54 // 37
    levels = mantissa_levels(3)  # 14
    assert levels == 14
    assert float(t2[3]) == pytest.approx(round(2**(-17 / 37) * 14) / 14)
    # The tables are what the elementwise table path computes.
    codes = torch.arange(8.0)
    deq = log_dequantize(codes, torch.ones(8, dtype=torch.bool), torch.tensor(2.0), 3, 18, 37)
    torch.testing.assert_close(deq, 2.0 * torch.exp2(-t1.float()) * t2, rtol=0, atol=1e-7)


def test_tables_literal_values():
    """3 bits, base 2^(50/37), worked by hand: i*q = 0, 50, ..., 350; T1 = floor(i q / 37);
    the mantissa 2^-((i q mod 37) / 37) = 1, .784, .614, .963, .755, .592, .928, .727 rounded
    to fourteenths."""
    t1, t2 = log_tables(3, 50, 37)
    assert t1.tolist() == [0, 1, 2, 4, 5, 6, 8, 9]
    assert (t2 * 14).round().int().tolist() == [14, 11, 9, 13, 11, 8, 13, 10]


@pytest.mark.parametrize('bits', [3, 4, 6])
@pytest.mark.parametrize('q', [10, 23, 37, 61, 137])
def test_table_path_within_half_mantissa_step_of_exact(bits, q):
    x = power_law(seed=q)
    scale = torch.tensor(0.7)
    codes, mask = log_quantize(x, scale, bits, q, ADALOG_R)
    exact = log_dequantize(codes, mask, scale, bits, q, ADALOG_R, table=False)
    table = log_dequantize(codes, mask, scale, bits, q, ADALOG_R, table=True)
    step = 1.0 / mantissa_levels(bits)
    # Per code the gap is s * 2^-T1 * |2^-frac - T2| <= s * step / 2.
    gap = (exact - table).abs().max().item()
    assert gap <= float(scale) * step / 2 + 1e-7
    assert gap > 0 or q == 37  # the paths really differ for a non-power-of-two base


def test_codes_past_range_dequantize_to_zero():
    x = torch.tensor([1.0, 2.0**-3, 2.0**-7, 2.0**-8, 2.0**-20, 0.0, -0.5])
    codes, mask = log_quantize(x, torch.tensor(1.0), 3, 37, ADALOG_R)
    assert mask.tolist() == [True, True, True, False, False, False, False]
    assert codes.max() <= 7
    for table in (True, False):
        out = log_dequantize(codes, mask, torch.tensor(1.0), 3, 37, ADALOG_R, table)
        assert out.tolist() == [1.0, 2.0**-3, 2.0**-7, 0.0, 0.0, 0.0, 0.0]


def test_log_sqrt2_grid():
    x = torch.tensor([1.0, 2**-0.5, 0.5, 2**-1.5])
    out = log_fake_quant(x, torch.tensor(1.0), 4, 1, 2, table=False)
    torch.testing.assert_close(out, x)


def test_exact_path_is_differentiable():
    x = (power_law(100) * 0.9 + 0.05).requires_grad_()
    out = log_fake_quant(x, torch.tensor(1.0), 4, 23, ADALOG_R, table=False)
    out.sum().backward()
    # Straight-through rounding of the code: d(s 2^(-k q / r))/dx = x_hat / x in range.
    torch.testing.assert_close(x.grad, (out / x).detach())


def test_bias_reparameterization_keeps_linear_output():
    torch.manual_seed(0)
    x = F.gelu(torch.randn(64, 32) * 2)
    w = torch.randn(16, 32) * 0.1
    b = torch.randn(16)
    s, z = minmax_params(w, 4, ch_axis=0)
    wq = uniform_fake_quant(w, s, z, 4)
    qx = log_fake_quant(x + GELU_SHIFT, (x + GELU_SHIFT).max(), 4, 23, ADALOG_R)
    shifted = F.linear(qx - GELU_SHIFT, wq, b)
    folded = F.linear(qx, wq, fold_shift_into_bias(wq, b, GELU_SHIFT))
    torch.testing.assert_close(folded, shifted, rtol=0, atol=1e-5)
    # Without a bias the fold creates one.
    folded0 = F.linear(qx, wq, fold_shift_into_bias(wq, None, GELU_SHIFT))
    torch.testing.assert_close(folded0, F.linear(qx - GELU_SHIFT, wq), rtol=0, atol=1e-5)


def test_bad_inputs():
    x = power_law(10)
    with pytest.raises(ValueError, match='bits=9'):
        log_quantize(x, torch.tensor(1.0), 9, 37, ADALOG_R)
    with pytest.raises(ValueError, match='scale must be > 0'):
        log_quantize(x, torch.tensor(0.0), 4, 37, ADALOG_R)
    with pytest.raises(ValueError, match='q='):
        log_quantize(x, torch.tensor(1.0), 4, 0, ADALOG_R)
    with pytest.raises(ValueError, match='q='):
        log_quantize(x, torch.tensor(1.0), 4, 2.5, ADALOG_R)
    with pytest.raises(ValueError, match='non-finite'):
        log_quantize(torch.tensor([math.nan]), torch.tensor(1.0), 4, 37, ADALOG_R)
    with pytest.raises(ValueError, match='does not match'):
        fold_shift_into_bias(torch.randn(4, 3), torch.randn(3), GELU_SHIFT)
