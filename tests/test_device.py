"""Device plumbing as far as a CPU can check it: a model on another device (``meta``) gets its
quantizers on that device when modules are swapped and when a CPU state is loaded into it, so
nothing stays on a hard-coded CPU."""
import copy
import warnings

import pytest
import torch

import mmq
from mmq.config import QuantConfig
from mmq.models.transform import quantize_modules
from .conftest import FAST_QUANT, tiny_vit


def _off_device(model: torch.nn.Module, device: str) -> list:
    return [n for n, b in model.named_buffers() if b.device.type != device]


TOKENS = dict(token_roles=['ln_input', 'proj_input', 'qk'])


@pytest.mark.parametrize('extra', [{}, TOKENS])
def test_swapped_quantizers_follow_the_model_device(extra):
    vit = tiny_vit(32, 8, 32, 2, 4).to('meta')
    quantize_modules(vit, QuantConfig(**extra))
    assert _off_device(vit, 'meta') == []


@pytest.mark.parametrize('extra', [{}, TOKENS])
def test_a_cpu_state_loads_onto_the_model_device(extra):
    vit = tiny_vit(32, 8, 32, 2, 4)
    calibrated = copy.deepcopy(vit)
    g = torch.Generator().manual_seed(0)
    mmq.quantize(calibrated, [torch.randn(2, 3, 32, 32, generator=g)],
                 dict(FAST_QUANT, **extra))
    target = copy.deepcopy(vit).to('meta')
    quantize_modules(target, QuantConfig.from_dict(dict(FAST_QUANT, **extra)))
    with warnings.catch_warnings():  # copying into meta tensors is a no-op: that is the point
        warnings.simplefilter('ignore', UserWarning)
        target.load_state_dict(calibrated.state_dict())
    assert _off_device(target, 'meta') == []
    # the calibrated (lazily shaped) buffers took their saved shapes
    for name, buf in calibrated.named_buffers():
        assert dict(target.named_buffers())[name].shape == buf.shape, name
