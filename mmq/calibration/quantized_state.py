"""Save and load a calibrated model: the whole state dict (reparameterized weights and
quantizer buffers) plus the QuantConfig that rebuilds the structure."""
import os
from typing import Optional, Sequence, Union

import torch
from torch import nn

from mmq.models.quant_config import QuantConfig

FORMAT = 'mmq.quantized_state.v1'


def save_quantized_state(model: nn.Module, path: str, qcfg: QuantConfig) -> str:
    """Write ``model``'s calibrated state to ``path`` atomically (never a half-written file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    torch.save(dict(format=FORMAT, quant_cfg=qcfg.to_dict(), state_dict=model.state_dict()), tmp)
    os.replace(tmp, path)
    return path


def load_quantized_state(model: nn.Module, path: str,
                         quant_cfg: Union[dict, QuantConfig, None] = None) -> QuantConfig:
    """Swap ``model``'s modules as the saved state's QuantConfig says, then load the state.

    ``quant_cfg``, if given, must match the saved one.
    """
    from .quantize import prepare
    if not os.path.isfile(path):
        raise FileNotFoundError(f'quantized state {path!r} does not exist: run the calibration '
                                'first or fix the path.')
    saved = torch.load(path, map_location='cpu', weights_only=False)
    if not isinstance(saved, dict) or saved.get('format') != FORMAT:
        raise ValueError(f'{path!r} is not an mmq quantized state (expected format {FORMAT}).')
    qcfg = QuantConfig.from_dict(saved['quant_cfg'])
    if quant_cfg is not None:
        wanted = quant_cfg if isinstance(quant_cfg, QuantConfig) else QuantConfig.from_dict(
            quant_cfg)
        if wanted != qcfg:
            diff = {k: (v, qcfg.to_dict()[k]) for k, v in wanted.to_dict().items()
                    if qcfg.to_dict()[k] != v}
            raise ValueError(f'quant_cfg does not match the saved state {path!r}: '
                             f'(config, saved) = {diff}.')
    prepare(model, qcfg)
    missing, unexpected = model.load_state_dict(saved['state_dict'], strict=False)
    if missing or unexpected:
        raise ValueError(f'quantized state {path!r} does not fit this model (checkpoint/config '
                         f'mismatch): missing {missing[:5]}, unexpected {unexpected[:5]}.')
    return qcfg


def save_partial_state(model: nn.Module, path: str, qcfg: QuantConfig, units_done: int,
                       reports: list, stage: Optional[str] = 'calibrate',
                       stages_done: Sequence[str] = ()) -> str:
    """Checkpoint unfinished work (atomically), so a crash loses no finished unit or stage.

    ``stages_done`` are finished; ``stage`` (``None`` when all are) is in progress with its
    first ``units_done`` units finished. A state saved at the end of a stage (``units_done``
    0 of the next) is a stage result that a later run can start from.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    torch.save(dict(format=FORMAT + '.partial', quant_cfg=qcfg.to_dict(), units_done=units_done,
                    stage=stage, stages_done=list(stages_done), reports=reports,
                    state_dict=model.state_dict()), tmp)
    os.replace(tmp, path)
    return path


def load_partial_state(path: str) -> Optional[dict]:
    """The partial state at ``path``, or ``None`` when there is none."""
    if not os.path.isfile(path):
        return None
    partial = torch.load(path, map_location='cpu', weights_only=False)
    if not isinstance(partial, dict) or partial.get('format') != FORMAT + '.partial':
        raise ValueError(f'{path!r} is not an mmq partial calibration state; delete it.')
    return partial
