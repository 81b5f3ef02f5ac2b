"""Calibration on a GPU matches the CPU result (skipped without CUDA).

None of these has run yet: no GPU was available where mmq is developed (see the README).
"""
import copy

import pytest
import torch

import mmq
from .conftest import FAST_QUANT, tiny_vit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
]


def _calibrate_both(model: torch.nn.Module, images: list, cfg: dict):
    cpu = copy.deepcopy(model)
    mmq.quantize(cpu, images, cfg)
    gpu = copy.deepcopy(model).cuda()
    mmq.quantize(gpu, [x.cuda() for x in images], cfg)
    return cpu, gpu


def _assert_close_models(cpu, gpu, test: torch.Tensor, max_rel_mse: float) -> None:
    for name, buf in gpu.named_buffers():
        assert buf.device.type == 'cuda', f'{name} stayed on {buf.device}'
    with torch.no_grad():
        ref = cpu(test)
        out = gpu(test.cuda())
        out = (out if torch.is_tensor(out) else out[-1]).cpu()
        ref = ref if torch.is_tensor(ref) else ref[-1]
    assert float((out - ref).pow(2).mean() / ref.pow(2).mean()) < max_rel_mse


@pytest.mark.parametrize('extra', [{}, dict(token_roles=['ln_input', 'proj_input', 'qk'])])
def test_vit_calibration_on_gpu_matches_cpu(extra):
    vit = tiny_vit(32, 8, 32, 2, 4)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]
    cpu, gpu = _calibrate_both(vit, images, dict(FAST_QUANT, **extra))
    _assert_close_models(cpu, gpu, torch.randn(4, 3, 32, 32, generator=g), 1e-2)


def test_swin_calibration_on_gpu_matches_cpu():
    from mmdet.models.backbones import SwinTransformer
    torch.manual_seed(0)
    swin = SwinTransformer(embed_dims=32, depths=[1, 1], num_heads=[2, 2], window_size=4,
                           out_indices=(0, 1)).eval()
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, 64, 64, generator=g) for _ in range(2)]
    cpu, gpu = _calibrate_both(swin, images, dict(FAST_QUANT))
    _assert_close_models(cpu, gpu, torch.randn(1, 3, 64, 64, generator=g), 1e-2)


def test_activation_store_tiers_device_host_disk(tmp_path):
    """CUDA items stay on the device up to its budget, then host memory, then disk, and all
    come back on the device, unchanged."""
    from mmq.calibration import ActivationStore
    store = ActivationStore(budget_bytes=128, spill_dir=str(tmp_path), device_budget_bytes=128)
    items = [(torch.randn(4, 8, device='cuda'), (2, 2)) for _ in range(3)]
    for item in items:
        store.append(item)
    assert (store.device_bytes, store.memory_bytes, store.spilled) == (128, 128, 1)
    for (a, hw), (b, hw2) in zip(items, store):
        assert b.device.type == 'cuda' and torch.equal(a, b) and hw == hw2
    store.close()
