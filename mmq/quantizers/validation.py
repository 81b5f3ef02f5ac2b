"""Argument checks shared by the quantizer functions: each raises ``ValueError`` naming the
argument, the offending value and what is allowed."""
from typing import Iterable

import torch
from torch import Tensor

UNIFORM_BITS = tuple(range(2, 9))
LOG_BITS = tuple(range(2, 9))


def check_bits(bits: int, allowed: Iterable[int] = UNIFORM_BITS, name: str = 'bits') -> int:
    """Return ``bits`` if it is an allowed integer bit width."""
    allowed = tuple(allowed)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        raise ValueError(f'{name}={bits!r} is not supported: use an integer in '
                         f'{min(allowed)}..{max(allowed)}.')
    return bits


def check_finite(x: Tensor, name: str = 'x') -> Tensor:
    """Return ``x`` if every element is finite."""
    if not torch.is_tensor(x):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(x).__name__}.')
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f'{name} has {bad} non-finite value(s) (NaN/Inf) out of {x.numel()}: '
                         'check the float model and its inputs before quantizing.')
    return x


def check_positive(x: Tensor, name: str = 'scale') -> Tensor:
    """Return ``x`` if every element is finite and > 0."""
    check_finite(x, name)
    if not bool((x > 0).all()):
        raise ValueError(f'{name} must be > 0 everywhere, got min {float(x.min()):.3g}.')
    return x


def check_broadcast(param: Tensor, x: Tensor, name: str) -> None:
    """Raise if ``param`` does not broadcast to ``x``'s shape."""
    try:
        torch.broadcast_shapes(param.shape, x.shape)
    except RuntimeError:
        raise ValueError(f'{name} of shape {tuple(param.shape)} does not broadcast to the input '
                         f'of shape {tuple(x.shape)}.') from None
