"""Save and load a calibrated model: the whole state dict (reparameterized weights and
quantizer buffers), the QuantConfig that rebuilds the structure, each quantizer's own kind and
bit width, and a checksum of the tensors.

Files hold only tensors and one JSON string, so they are read with
``torch.load(weights_only=True)``: a crafted file cannot run code. A state whose tensors do
not match their checksum, whose quantizers do not match its label, or (for a partial state)
that was made from another float checkpoint / other calibration images is refused.
"""
import hashlib
import json
import os
import pickle
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from mmq.config.quant_config import QuantConfig
from mmq.quantizers.base_quantizer import BaseQuantizer
from mmq.utils import atomic_write

FORMAT = 'mmq.quantized_state.v2'
PARTIAL_FORMAT = FORMAT + '.partial'


def tensor_checksum(state: Dict[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu()
        h.update(f'{key}|{t.dtype}|{tuple(t.shape)}|'.encode())
        if t.numel():  # a fresh 1-d copy: any strides (a numel-1 tensor may have stride 8)
            flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.reshape(-1))
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def quantizer_layout(model: nn.Module) -> Dict[str, List]:
    """``{module name: [quantizer class, bits]}`` of every quantizer of ``model`` (with its
    ``group_size`` appended where it has one, then ``'float_zero_point'`` where it has one)."""
    layout = {}
    for name, m in model.named_modules():
        if isinstance(m, BaseQuantizer):
            group = getattr(m, 'group_size', None)
            layout[name] = [type(m).__name__, int(m.bits)] + ([group] if group else []) + (
                ['float_zero_point'] if getattr(m, 'float_zero_point', False) else [])
    return layout


def _atomic_save(obj: dict, path: str) -> str:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _pack(model: nn.Module, fmt: str, meta: dict) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = dict(meta, layout=quantizer_layout(model))
    return dict(format=fmt, meta=json.dumps(meta), state_dict=state,
                checksum=tensor_checksum(state))


def _unpack(path: str, fmt: str, what: str) -> dict:
    """The file's meta (decoded) with its ``state_dict``, after every check."""
    try:
        saved = torch.load(path, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise ValueError(f'{path!r} is not a readable {what} (truncated, corrupt, or a file '
                         f'holding code, which is never executed): {str(e)[:300]}') from e
    if not isinstance(saved, dict) or saved.get('format') != fmt:
        found = saved.get('format') if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(f'{path!r} is not an {what} (format {found!r}, expected {fmt!r}); '
                         'states from older mmq versions must be made again.')
    state = saved.get('state_dict')
    if not isinstance(state, dict) or tensor_checksum(state) != saved.get('checksum'):
        raise ValueError(f'{path!r}: the tensors do not match their checksum: the file is '
                         'corrupt; make it again.')
    try:
        meta = json.loads(saved['meta'])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f'{path!r}: unreadable metadata ({e}); make it again.') from e
    meta['state_dict'] = state
    return meta


def check_layout(model: nn.Module, saved: Dict[str, List], path: str) -> None:
    """The rebuilt model's quantizers must be the saved ones (kind and bits)."""
    now = quantizer_layout(model)
    diff = {k: (saved.get(k), now.get(k)) for k in set(saved) | set(now)
            if saved.get(k) != now.get(k)}
    if diff:
        some = dict(sorted(diff.items())[:3])
        raise ValueError(f'{path!r}: its quantizers (saved, rebuilt from its quant_cfg) differ '
                         f'in {len(diff)} places, e.g. {some}: the state was saved with a '
                         'quant_cfg that does not describe it.')


def save_quantized_state(model: nn.Module, path: str, qcfg: QuantConfig) -> str:
    """Write ``model``'s calibrated state to ``path`` atomically (never a half-written file)."""
    return _atomic_save(_pack(model, FORMAT, dict(quant_cfg=qcfg.to_dict())), path)


def _eval_fields(cfg: dict) -> dict:
    """The fields evaluation depends on (calibration-time settings excluded)."""
    calib_only = {'search_rows', 'search_windows', 'search_queries', 'rounds', 'seed',
                  'adalog_base_range',
                  'uniform_schedule', 'log_schedule', 'calibrator', 'mr', 'reconstruct',
                  'percentile', 'search_outliers', 'ln_reparam_ranges'}
    return {k: v for k, v in cfg.items() if k not in calib_only}


def load_quantized_state(model: nn.Module, path: str,
                         quant_cfg: Union[dict, QuantConfig, None] = None) -> QuantConfig:
    """Swap ``model``'s modules as the saved state's QuantConfig says, then load the state.

    ``quant_cfg``, if given, must agree with the saved one on everything evaluation depends
    on (bits, quantizer kinds, scope, stages; calibration-only settings such as
    ``search_rows`` may differ).
    """
    from .quantize import prepare
    if not os.path.isfile(path):
        raise FileNotFoundError(f'quantized state {path!r} does not exist: run the calibration '
                                'first or fix the path.')
    saved = _unpack(path, FORMAT, 'mmq quantized state')
    qcfg = QuantConfig.from_dict(saved['quant_cfg'])
    if quant_cfg is not None:
        wanted = quant_cfg if isinstance(quant_cfg, QuantConfig) else QuantConfig.from_dict(
            quant_cfg)
        a, b = _eval_fields(wanted.to_dict()), _eval_fields(qcfg.to_dict())
        diff = {k: (a[k], b.get(k)) for k in a if b.get(k) != a[k]}
        if diff:
            raise ValueError(f'quant_cfg does not match the saved state {path!r}: '
                             f'(config, saved) = {diff}.')
    prepare(model, qcfg)
    check_layout(model, saved['layout'], path)
    missing, unexpected = model.load_state_dict(saved['state_dict'], strict=False)
    if missing or unexpected:
        raise ValueError(f'quantized state {path!r} does not fit this model (checkpoint/config '
                         f'mismatch): missing {missing[:5]}, unexpected {unexpected[:5]}.')
    return qcfg


def save_partial_state(model: nn.Module, path: str, qcfg: QuantConfig, units_done: int,
                       reports: list, stage: Optional[str] = 'calibrate',
                       stages_done: Sequence[str] = (),
                       identity: Optional[dict] = None) -> str:
    """Checkpoint unfinished work (atomically), so a crash loses no finished unit or stage.

    ``stages_done`` are finished; ``stage`` (``None`` when all are) is in progress with its
    first ``units_done`` units finished. A state saved at the end of a stage (``units_done``
    0 of the next) is a stage result that a later run can start from. ``identity`` (float
    checkpoint hash, calibration images, seed, mmq version) is what a resume checks with
    :func:`check_identity`.
    """
    meta = dict(quant_cfg=qcfg.to_dict(), units_done=units_done, stage=stage,
                stages_done=list(stages_done), reports=reports, identity=identity)
    try:
        return _atomic_save(_pack(model, PARTIAL_FORMAT, meta), path)
    except TypeError as e:  # a report value JSON cannot hold
        raise TypeError(f'partial state {path!r}: the reports must be plain data: {e}') from e


def load_partial_state(path: str) -> Optional[dict]:
    """The partial state at ``path`` (its fields and ``state_dict``), or ``None`` when there
    is none."""
    if not os.path.isfile(path):
        return None
    return _unpack(path, PARTIAL_FORMAT, 'mmq partial calibration state')


def check_identity(partial: dict, identity: Optional[dict], path: str) -> None:
    """Refuse to resume ``partial`` when it was made from another float checkpoint, other
    calibration images, another seed or another mmq version than ``identity`` describes."""
    saved = partial.get('identity')
    if identity is None or saved == identity:
        return
    if saved is None:
        raise ValueError(f'{path!r} does not say which checkpoint and images it was made from; '
                         'refusing to resume from it: delete it (or use another work dir).')
    diff = [k for k in sorted(set(saved) | set(identity)) if saved.get(k) != identity.get(k)]
    detail = '; '.join(
        f'{k}: saved {_short(saved.get(k))}, now {_short(identity.get(k))}' for k in diff)
    raise ValueError(f'{path!r} was made by another run ({detail}): resuming from it would '
                     'mix two calibrations. Delete it (or use another work dir) to start over.')


def _short(v) -> str:
    if isinstance(v, list):
        return f'{len(v)} items, first {v[:2]}'
    return repr(v)
