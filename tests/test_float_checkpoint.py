"""Float checkpoints a user hands us are read without running code, including the ones
mmengine's training loop writes (message hub, numpy scalars), which
``torch.load(weights_only=True)`` refuses."""
import os
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub

from mmq.float_checkpoint import (Placeholder, load_checkpoint_without_code,
                                  weights_only_copy)
from mmq.utils import file_sha256


def _training_checkpoint(path) -> dict:
    """What mmengine's CheckpointHook saves, in miniature: weights, a message hub with
    HistoryBuffers, numpy values in meta."""
    state = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).state_dict()
    hub = MessageHub.get_instance('mmq_test_float_checkpoint')
    hub.update_scalar('train/loss', 0.5)
    torch.save(dict(meta=dict(epoch=3, seed=np.int64(7), dataset_meta=dict(classes=('a', 'b'))),
                    state_dict=state, message_hub=hub.state_dict(),
                    optimizer=dict(state={}, param_groups=[dict(lr=np.float64(0.1))])), path)
    return state


def test_a_training_checkpoint_reads_without_its_objects(tmp_path):
    path = str(tmp_path / 'epoch_3.pth')
    state = _training_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what mmengine's loader meets under torch >= 2.6
    ckpt, replaced = load_checkpoint_without_code(path)
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in replaced
    assert any(name.endswith('getattr') for name in replaced)  # never allowed, never called
    assert list(ckpt['state_dict']) == list(state)
    for k, v in state.items():
        assert torch.equal(ckpt['state_dict'][k], v), k
    assert ckpt['meta']['epoch'] == 3 and isinstance(ckpt['meta']['seed'], Placeholder)
    buffers = ckpt['message_hub']['log_scalars']
    assert all(isinstance(b, Placeholder) for b in buffers.values())


class _Payload:

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_a_pickled_payload_is_never_called(tmp_path):
    marker = tmp_path / 'ran'
    path = str(tmp_path / 'crafted.pth')
    torch.save(dict(state_dict=dict(w=torch.ones(2)), extra=_Payload(str(marker))), path)
    ckpt, replaced = load_checkpoint_without_code(path)
    assert not marker.exists()
    assert isinstance(ckpt['extra'], Placeholder) and replaced == ['posix.system']
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))


def test_bad_files_get_a_clear_error(tmp_path):
    for content in (b'', b'not a checkpoint\n'):
        path = tmp_path / 'bad.pth'
        path.write_bytes(content)
        with pytest.raises(ValueError, match='cannot be read as tensors'):
            load_checkpoint_without_code(str(path))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_checkpoint_without_code(str(tmp_path / 'missing.pth'))


def test_weights_only_copy(tmp_path):
    clean = str(tmp_path / 'clean.pth')
    torch.save(dict(state_dict=dict(w=torch.ones(2))), clean)
    assert weights_only_copy(clean, str(tmp_path / 'a')) == (clean, [])  # used as it is
    path = str(tmp_path / 'epoch_3.pth')
    state = _training_checkpoint(path)
    copy, replaced = weights_only_copy(path, str(tmp_path / 'a'))
    assert copy != path and replaced
    saved = torch.load(copy, weights_only=True)
    assert all(torch.equal(saved['state_dict'][k], v) for k, v in state.items())
    assert saved['meta']['epoch'] == 3 and saved['meta']['dataset_meta'] == dict(
        classes=('a', 'b'))
    assert 'seed' not in saved['meta']  # a numpy scalar: not plain, left out
    # Another work dir gets the same bytes (resume checks compare checkpoint sha256s).
    other, _ = weights_only_copy(path, str(tmp_path / 'b'))
    assert file_sha256(other) == file_sha256(copy)


def test_mmengine_reads_local_files_without_code_once_asked(tmp_path, monkeypatch):
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint, load_from_local

    from mmq.float_checkpoint import read_local_checkpoints_without_code
    # mmengine's own local loader (an earlier test's hook may have replaced it already).
    monkeypatch.setattr(CheckpointLoader, '_schemes', dict(CheckpointLoader._schemes, **{
        '': load_from_local}))
    path = str(tmp_path / 'epoch_3.pth')
    state = _training_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        _load_checkpoint(path, map_location='cpu')  # mmengine's own local loader
    read_local_checkpoints_without_code()  # what QuantCalibrationHook.before_run does
    ckpt = _load_checkpoint(path, map_location='cpu')
    for k, v in state.items():
        assert torch.equal(ckpt['state_dict'][k], v), k
    marker = tmp_path / 'ran'
    crafted = str(tmp_path / 'crafted.pth')
    torch.save(dict(state_dict=dict(w=torch.ones(2)), extra=_Payload(str(marker))), crafted)
    assert isinstance(_load_checkpoint(crafted)['extra'], Placeholder)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match='can not be found'):
        _load_checkpoint(str(tmp_path / 'missing.pth'))
