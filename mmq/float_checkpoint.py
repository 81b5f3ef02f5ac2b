"""Reading a checkpoint a user hands us without running code from it.

``torch.load(weights_only=True)`` refuses any pickled object that is not a tensor or a plain
container, and so refuses the checkpoints mmengine's own training loop writes: their
``message_hub`` holds ``HistoryBuffer`` objects (whose bound statistics methods pickle as
``builtins.getattr``, which can never be allowed) and their ``meta`` numpy scalars. Allowing
those globals would let a crafted file call arbitrary functions, so
:func:`load_checkpoint_without_code` reads such a file with an unpickler that resolves only
torch's own weights-only allowlist (tensors, storages, dtypes, plain containers) and turns
every other global into an inert :class:`Placeholder` that is never called, built or
imported. Tensors come out exactly; the bookkeeping comes out as placeholders.
"""
import io
import os
import os.path as osp
import pickle
import types
import zipfile
from collections import OrderedDict
from typing import Any, List, Tuple

import torch

from mmq.utils import atomic_write, file_sha256

COPY_PREFIX = 'float_weights_'  # weights_only copies in a work dir: float_weights_<sha12>.pth


def _torch_allowlist() -> dict:
    """``'module.name' -> object`` of what ``torch.load(weights_only=True)`` may resolve."""
    from torch import _weights_only_unpickler as wou  # the allowlist torch itself enforces
    allowed = dict(wou._get_allowed_globals())
    allowed.update(wou._get_user_allowed_globals())
    return allowed


class Placeholder:
    """Stands for a pickled object whose class is not on the allowlist: it absorbs the
    arguments and state the file gives it and does nothing else. ``qualname`` names what
    the file asked for."""

    qualname = '?'

    def __new__(cls, *args, **kwargs) -> 'Placeholder':
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs) -> 'Placeholder':
        return Placeholder()

    def __repr__(self) -> str:
        return f'Placeholder({self.qualname})'


class _NoCodeUnpickler(pickle._Unpickler):  # the Python unpickler: its opcodes can be vetted
    """Resolves torch's allowlist only; other globals become placeholders. ``BUILD`` (which
    would set attributes on an object) is applied to placeholders only."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.allowed = _torch_allowlist()
        self.allowed_types = {v for v in self.allowed.values() if isinstance(v, type)}
        self.replaced: List[str] = []

    def find_class(self, module: str, name: str) -> Any:
        qualname = f'{module}.{name}'
        if qualname in self.allowed:
            return self.allowed[qualname]
        self.replaced.append(qualname)
        return type('Placeholder', (Placeholder, ), dict(qualname=qualname))

    def _load_build(self) -> None:
        # What torch's weights-only unpickler builds, and nothing else.
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Placeholder):
            return
        if type(inst) is torch.Tensor:
            inst.set_(*state)
        elif type(inst) is torch.nn.Parameter:
            inst.__setstate__(state)
        elif type(inst) is OrderedDict or type(inst) in self.allowed_types:
            slots = None
            if isinstance(state, tuple) and len(state) == 2:
                state, slots = state
            if hasattr(type(inst), '__setstate__') and type(inst) is not OrderedDict:
                inst.__setstate__(state if slots is None else (state, slots))
                return
            inst.__dict__.update(state or {})
            for k, v in (slots or {}).items():
                setattr(inst, k, v)
        else:
            raise pickle.UnpicklingError(
                f'the checkpoint sets the state of a {type(inst).__name__}: refused (only '
                'tensors, plain containers and placeholders are built).')

    dispatch[pickle.BUILD[0]] = _load_build


class _Module(types.SimpleNamespace):
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""


def load_checkpoint_without_code(path: str, map_location='cpu') -> Tuple[Any, List[str]]:
    """``(checkpoint, replaced)``: the file read without running any code from it; ``replaced``
    names the globals turned into placeholders (empty when ``weights_only=True`` suffices)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist.')
    try:  # memory-mapped where the format allows: checking or copying need not read it all
        return torch.load(path, map_location=map_location, weights_only=True,
                          mmap=zipfile.is_zipfile(path)), []
    except pickle.UnpicklingError:
        pass  # objects besides tensors: read again below, with placeholders
    except Exception as e:  # noqa: BLE001  (torch raises several types for bad files)
        raise ValueError(_unreadable(path, e)) from e
    seen: List[List[str]] = []

    class Unpickler(_NoCodeUnpickler):

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            seen.append(self.replaced)

    module = _Module(Unpickler=Unpickler, load=lambda f, **kw: Unpickler(f, **kw).load(),
                     __name__='mmq.float_checkpoint')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False,
                          pickle_module=module)
    except Exception as e:  # noqa: BLE001
        raise ValueError(_unreadable(path, e)) from e
    return ckpt, sorted({name for names in seen for name in names})


def load_from_local_without_code(filename: str, map_location=None) -> Any:
    """mmengine's loader of local checkpoint files (``CheckpointLoader`` scheme ``''``), reading
    as :func:`load_checkpoint_without_code` does: what ``torch.load(weights_only=True)`` reads
    comes out the same; a training checkpoint (message hub, numpy scalars), which that refuses,
    comes out with its tensors exact and its bookkeeping as placeholders, and says so."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    ckpt, replaced = load_checkpoint_without_code(filename, map_location)
    if replaced:
        from mmengine.logging import print_log
        print_log(f'[mmq] {filename} also holds pickled objects ({_names(replaced)}): read '
                  'without running code, they are inert placeholders; its tensors load as '
                  'they are.', logger='current')
    return ckpt


def read_local_checkpoints_without_code() -> None:
    """Make mmengine read local checkpoint files with :func:`load_from_local_without_code`
    (for the rest of the process), so that a Runner given a training checkpoint as
    ``load_from`` loads its weights instead of failing in ``torch.load(weights_only=True)``,
    and never unpickles code from it."""
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_without_code,
                                     force=True)


def _names(replaced: List[str]) -> str:
    """The first few placeholder names, for a message."""
    return ', '.join(replaced[:4]) + (', ...' if len(replaced) > 4 else '')


def _unreadable(path: str, error: Exception) -> str:
    return (f'checkpoint {path!r} cannot be read as tensors ({type(error).__name__}: '
            f'{str(error)[:200]}): it is empty, corrupt or not a checkpoint.')


def is_plain(value: Any) -> bool:
    """Whether ``value`` is built from numbers, strings and plain containers only."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def state_dict_of(ckpt: Any, path: str) -> dict:
    """The tensors of a loaded checkpoint (its ``state_dict``, or the file itself)."""
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f'checkpoint {path!r} holds no state_dict of tensors: it is empty or '
                         'not a model checkpoint.')
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f'checkpoint {path!r}: state_dict entries {bad[:3]} are not tensors.')
    return state


def weights_only_copy(path: str, work_dir: str) -> Tuple[str, List[str]]:
    """``(path, [])`` when ``torch.load(weights_only=True)`` reads the file (mmengine loads it
    as it is); otherwise its tensors, read by :func:`load_checkpoint_without_code`, written to
    ``work_dir/float_weights_<sha256[:12]>.pth`` (reused when present), and ``(copy,
    replaced)``. The bookkeeping (message hub, optimizer objects) is left out."""
    ckpt, replaced = load_checkpoint_without_code(path)
    if not replaced:
        return path, []
    copy = osp.join(work_dir, f'{COPY_PREFIX}{file_sha256(path)[:12]}.pth')
    if not osp.isfile(copy):
        state = state_dict_of(ckpt, path)
        meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
        meta = {k: v for k, v in meta.items() if is_plain(v)}  # e.g. dataset_meta, epoch
        meta['mmq_weights_only_copy_of'] = osp.abspath(path)
        os.makedirs(work_dir, exist_ok=True)
        buffer = io.BytesIO()  # saved in memory: the same tensors give the same bytes (and
        torch.save(dict(state_dict=state, meta=meta), buffer)  # sha256, for resume checks)
        atomic_write(copy, lambda tmp: open(tmp, 'wb').write(buffer.getvalue()))
    return copy, replaced


def loadable_checkpoint(path: str, work_dir: str) -> str:
    """``path``, or a weights-only copy of its tensors in ``work_dir`` when it also holds
    training bookkeeping (mmengine's message hub, numpy scalars) that ``torch.load`` refuses
    to unpickle with ``weights_only=True`` (mmq never unpickles it either: see
    :mod:`mmq.float_checkpoint`)."""
    try:
        copy, replaced = weights_only_copy(path, work_dir)
    except ValueError as e:
        raise SystemExit(f'[mmq] {e}') from None  # a tool's clear message, no traceback
    if replaced:
        print(f'[mmq] {path} also holds pickled objects ({_names(replaced)}), which are not '
              f'loaded; its tensors were written to {copy} and are loaded from there.',
              flush=True)
    return copy
