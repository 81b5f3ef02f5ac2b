"""Backbones as chains of calibration units (blocks).

A unit is a module whose quantized layers are calibrated together, and a function that maps
the unit's input state to the next unit's input state. Chaining the units lets calibration
push each block's inputs through once and hand the quantized outputs to the next block,
instead of re-running the whole model for every layer. Each backbone family's units come
from its adapter (:mod:`mmq.models.adapters`).
"""
import torch
from torch import Tensor, nn

from mmq.models.adapters import State, Unit, build_units

__all__ = ['State', 'Unit', 'build_units', 'is_detector', 'first_tensor']


def is_detector(model: nn.Module) -> bool:
    """An mmdet detector (a backbone and a data preprocessor), as opposed to a bare backbone
    or classifier."""
    return hasattr(model, 'backbone') and hasattr(model, 'data_preprocessor')


def first_tensor(state) -> Tensor:
    """The first tensor of a unit state (or a module output); a tensor is its own."""
    return state if torch.is_tensor(state) else next(x for x in state if torch.is_tensor(x))
