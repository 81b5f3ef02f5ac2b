"""Saved states cannot lie and files cannot run code: pickle payloads are refused by every
loader, a flipped tensor is detected, a mislabelled state is refused, a partial state from
another checkpoint is not resumed, and two runs cannot share a work dir."""
import copy
import os
import subprocess
import sys

import pytest
import torch

import mmq
from mmq.calibration import load_partial_state, save_partial_state
from mmq.calibration.activation_store import ActivationStore
from mmq.calibration.quantized_state import check_identity
from mmq.hooks.quant_calibration_hook import check_checkpoint_matches
from mmq.models import QuantConfig
from mmq.utils import WorkDirLock
from .conftest import FAST_QUANT, tiny_vit

TOOL = os.path.join(os.path.dirname(__file__), '..', 'tools', 'quantize.py')


class Payload:
    """Unpickling this creates ``path`` (stands for arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.fixture(scope='module')
def quantized():
    model = tiny_vit(32, 16, 32, 1, 4)
    g = torch.Generator().manual_seed(0)
    float_model = copy.deepcopy(model)
    mmq.quantize(model, [torch.randn(2, 3, 32, 32, generator=g)], dict(FAST_QUANT))
    return float_model, model


def test_pickle_payloads_never_run(tmp_path, quantized):
    float_model, _ = quantized
    marker = tmp_path / 'pwned'
    evil = str(tmp_path / 'evil.pth')
    torch.save(dict(format='mmq.quantized_state.v2', meta=Payload(str(marker))), evil)
    with pytest.raises(ValueError, match='not a readable'):
        mmq.load_quantized_state(copy.deepcopy(float_model), evil)
    with pytest.raises(ValueError, match='not a readable'):
        load_partial_state(evil)
    wrong = {k: torch.zeros(1) for k in float_model.state_dict()}  # every shape wrong
    torch.save(dict(state_dict=wrong, meta=Payload(str(marker))), evil)
    # A float checkpoint's other objects become inert placeholders (mmq.float_checkpoint):
    # its tensors are still checked against the model, the payload never runs.
    with pytest.raises(ValueError, match='does not match the config'):
        check_checkpoint_matches(float_model, evil)
    store = ActivationStore(budget_bytes=0, spill_dir=str(tmp_path / 'spill'))
    store.append((torch.zeros(4), ))
    spilled = store._items[0][1]
    torch.save((Payload(str(marker)), ), spilled)  # a file swapped in the spill folder
    with pytest.raises(Exception):
        store[0]
    store.close()
    assert not marker.exists()


def test_a_flipped_tensor_is_detected(tmp_path, quantized):
    float_model, model = quantized
    path = str(tmp_path / 'q.pth')
    mmq.save_quantized_state(model, path, QuantConfig(**FAST_QUANT))
    mmq.load_quantized_state(copy.deepcopy(float_model), path)  # intact: loads
    saved = torch.load(path, weights_only=True)
    key = next(k for k in saved['state_dict'] if k.endswith('weight'))
    saved['state_dict'][key].view(-1)[0] += 1.0
    torch.save(saved, path)
    with pytest.raises(ValueError, match='checksum'):
        mmq.load_quantized_state(copy.deepcopy(float_model), path)
    # Raw bytes flipped inside the file: refused either by the zip reader or the checksum.
    mmq.save_quantized_state(model, path, QuantConfig(**FAST_QUANT))
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 0xFF
    open(path, 'wb').write(bytes(data))
    with pytest.raises(ValueError, match='checksum|not a readable'):
        mmq.load_quantized_state(copy.deepcopy(float_model), path)


def test_a_state_saved_under_another_label_is_refused(tmp_path, quantized):
    """A W4A4 model saved as W6A6 would reload as 6-bit quantizers with 4-bit scales."""
    float_model, model = quantized
    path = str(tmp_path / 'q.pth')
    mmq.save_quantized_state(model, path, QuantConfig(**dict(FAST_QUANT, w_bits=6, a_bits=6)))
    with pytest.raises(ValueError, match='do not describe it|differ'):
        mmq.load_quantized_state(copy.deepcopy(float_model), path)


def test_calibration_only_settings_do_not_block_loading(tmp_path, quantized):
    float_model, model = quantized
    path = str(tmp_path / 'q.pth')
    mmq.save_quantized_state(model, path, QuantConfig(**FAST_QUANT))
    mmq.load_quantized_state(copy.deepcopy(float_model), path,
                             dict(FAST_QUANT, search_rows=1024, rounds=3))
    with pytest.raises(ValueError, match='does not match'):
        mmq.load_quantized_state(copy.deepcopy(float_model), path, dict(FAST_QUANT, w_bits=6))


def test_a_partial_state_from_another_checkpoint_is_not_resumed(tmp_path, quantized):
    _, model = quantized
    path = str(tmp_path / 'partial.pth')
    ident = dict(checkpoint_sha256='a' * 64, images=['x.png', 'y.png'], seed=0,
                 mmq_version='0.1.0')
    save_partial_state(model, path, QuantConfig(**FAST_QUANT), 1, [], identity=ident)
    partial = load_partial_state(path)
    check_identity(partial, dict(ident), path)  # the same run: resumes
    with pytest.raises(ValueError, match='checkpoint_sha256'):
        check_identity(partial, dict(ident, checkpoint_sha256='b' * 64), path)
    with pytest.raises(ValueError, match='images'):
        check_identity(partial, dict(ident, images=['z.png']), path)
    save_partial_state(model, path, QuantConfig(**FAST_QUANT), 1, [])  # no identity saved
    with pytest.raises(ValueError, match='does not say'):
        check_identity(load_partial_state(path), ident, path)


def test_a_second_run_in_a_locked_work_dir_stops(tmp_path):
    with WorkDirLock(str(tmp_path)):
        with pytest.raises(RuntimeError, match='another mmq run'):
            with WorkDirLock(str(tmp_path)):
                pass
    with WorkDirLock(str(tmp_path)):  # released
        pass


@pytest.mark.parametrize('args,message', [
    (['--num-images', '0'], 'at least 1 image'),
])
def test_quantize_tool_refuses_bad_arguments(tmp_path, args, message):
    cfg = os.path.join(os.path.dirname(__file__), '..', 'configs', 'demo',
                       'mask-rcnn_swin-demo_w4a4-adalog_shapes.py')
    ckpt = os.path.join(os.path.dirname(__file__), '..', 'checkpoints', 'demo',
                        'mask-rcnn_swin-demo_shapes.pth')
    run = subprocess.run([sys.executable, TOOL, cfg, ckpt, '--work-dir', str(tmp_path)] + args,
                         capture_output=True, text=True)
    assert run.returncode != 0 and message in run.stderr, run.stderr[-2000:]


def test_an_empty_checkpoint_gets_a_clear_error(tmp_path, quantized):
    float_model, _ = quantized
    for content in (b'', b'not a checkpoint\n'):
        path = tmp_path / 'bad.pth'
        path.write_bytes(content)
        with pytest.raises(ValueError, match='cannot be read as tensors'):
            check_checkpoint_matches(float_model, str(path))


def test_role_bits_are_applied_and_survive_save_and_load(tmp_path, quantized):
    """W4A4 with the post-Softmax and LayerNorm-input roles at 8 bits: the quantizers say so,
    and a saved state reloads with the same layout (and is refused under plain W4A4)."""
    float_model, _ = quantized
    cfg = dict(FAST_QUANT, role_bits=dict(post_softmax=8, ln_input=8))
    model = copy.deepcopy(float_model)
    g = torch.Generator().manual_seed(0)
    mmq.quantize(model, [torch.randn(2, 3, 32, 32, generator=g)], cfg)
    blk = model.blocks[0]
    assert blk.attn.av_matmul.a_quantizer.bits == 8 and blk.attn.av_matmul.b_quantizer.bits == 4
    assert blk.attn.qkv.input_quantizer.bits == 8 and blk.mlp.fc1.input_quantizer.bits == 8
    assert blk.attn.proj.input_quantizer.bits == 4 and blk.mlp.fc2.input_quantizer.bits == 4
    assert blk.attn.qk_matmul.a_quantizer.bits == 4
    path = str(tmp_path / 'q.pth')
    mmq.save_quantized_state(model, path, QuantConfig(**cfg))
    fresh = copy.deepcopy(float_model)
    mmq.load_quantized_state(fresh, path)
    assert fresh.blocks[0].attn.qkv.input_quantizer.bits == 8
    mmq.save_quantized_state(model, path, QuantConfig(**FAST_QUANT))  # mislabelled
    with pytest.raises(ValueError, match='does not describe it'):
        mmq.load_quantized_state(copy.deepcopy(float_model), path)
    with pytest.raises(ValueError, match='unknown role'):
        QuantConfig(role_bits=dict(attention=8))


@pytest.mark.parametrize('bad,message', [
    (dict(uniform_schedule=dict(width=0)), 'uniform_schedule.width=0'),
    (dict(log_schedule=dict(shrink=0.5)), 'log_schedule.shrink'),
    (dict(search_rows=True), 'search_rows=True'),
    (dict(ln_reparam='no'), "ln_reparam='no'"),
    (dict(seed='x'), "seed='x'"),
    (dict(search_outliers=2.0), 'search_outliers'),
])
def test_bad_quant_cfg_values_are_named(bad, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(')):
        QuantConfig(**bad)


def test_work_dir_calibration_resumes_without_a_runner(tmp_path, monkeypatch):
    """calibrate_in_work_dir (the library call under the hook): a run killed after two units
    leaves a partial state, the rerun resumes it and ends bit-identical to an uninterrupted
    run; a rerun with other images is refused."""
    from mmq.calibration.work_dir import PARTIAL_FILE, WorkDirCheckpointer, calibrate_in_work_dir
    vit = tiny_vit(32, 16, 32, 2, 4)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]
    qcfg = QuantConfig.from_dict(FAST_QUANT)
    identity = dict(checkpoint_sha256='abc', images=['a.jpg', 'b.jpg'], seed=0,
                    mmq_version=mmq.__version__)
    full = copy.deepcopy(vit)
    calibrate_in_work_dir(full, images, qcfg, str(tmp_path / 'full'), identity,
                          activation_budget_bytes=0)  # everything spilled, then removed
    assert sorted(os.listdir(tmp_path / 'full')) == ['.mmq.lock', 'calibration_report.json',
                                                     'quantized_state.pth', 'stage_calibrate.pth']

    save = WorkDirCheckpointer.on_unit_done

    def save_then_crash(self, report):
        save(self, report)
        if len(self.done_units) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(WorkDirCheckpointer, 'on_unit_done', save_then_crash)
    work = str(tmp_path / 'killed')
    with pytest.raises(KeyboardInterrupt):
        calibrate_in_work_dir(copy.deepcopy(vit), images, qcfg, work, identity)
    monkeypatch.setattr(WorkDirCheckpointer, 'on_unit_done', save)
    assert os.path.isfile(os.path.join(work, PARTIAL_FILE))
    with pytest.raises(ValueError, match='images'):
        calibrate_in_work_dir(copy.deepcopy(vit), images, qcfg, work,
                              dict(identity, images=['c.jpg', 'd.jpg']))
    resumed = copy.deepcopy(vit)
    seen = []  # on_stage_done runs once the stage's file is saved

    def stage_done(stage, finished, stage_report):
        seen.append((stage, finished, os.path.isfile(os.path.join(work, f'stage_{stage}.pth'))))

    report = calibrate_in_work_dir(resumed, images, qcfg, work, identity,
                                   on_stage_done=stage_done)
    assert report['status'] == 'done' and len(report['units']) == 4
    assert seen == [('calibrate', ['calibrate'], True)]
    assert not os.path.isfile(os.path.join(work, PARTIAL_FILE))
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_every_random_stream_has_one_derivation_with_its_historical_seed():
    """seeded_generator is the one seed derivation; its values are the ones each stream used
    before it existed (so seeded results and the benchmark rows are unchanged)."""
    from mmq.utils import seeded_generator
    seed = 3
    expected = dict(images=3, calibrate=3 * 100003 + 5, ln_search=3 * 100003 + 5 + 50021,
                    detector=3 * 100003 + 99991, mr=3 * 1000003 + 7,
                    reconstruct=3 * 1000003 + 17 * 5 + 1, reconstruct_neck=3 * 1000003 + 999983)
    for stream, value in expected.items():
        assert seeded_generator(seed, stream, 5).initial_seed() == value, stream
    with pytest.raises(ValueError, match='unknown random stream'):
        seeded_generator(seed, 'nope')
