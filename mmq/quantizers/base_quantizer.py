"""State shared by every quantizer module: bit width, on/off switch, and buffers whose shape
is only known after calibration (so ``state_dict()`` of a calibrated model reloads exactly
into a freshly built, uncalibrated one)."""
from typing import Tuple

import torch
from torch import Tensor, nn

from .validation import check_bits


class BaseQuantizer(nn.Module):
    """Base class of mmq's quantizer modules.

    A quantizer passes its input through unchanged until it is calibrated, or while
    ``enabled`` is False (float mode).

    Args:
        bits (int): Bit width.
        allowed_bits (tuple[int]): The bit widths this quantizer supports.
    """

    lazy_buffers: Tuple[str, ...] = ()

    def __init__(self, bits: int, allowed_bits: Tuple[int, ...]) -> None:
        super().__init__()
        self.bits = check_bits(bits, allowed_bits)
        self.enabled = True
        self.register_buffer('calibrated', torch.tensor(False))
        for name in self.lazy_buffers:
            self.register_buffer(name, torch.empty(0))

    @property
    def is_active(self) -> bool:
        """Whether ``forward`` quantizes (calibrated and enabled)."""
        return self.enabled and bool(self.calibrated)

    def float_path(self, x: Tensor) -> Tensor:
        """What ``forward`` returns with quantization dropped (QDrop): ``x`` itself, or what
        the next layer expects instead (see :class:`LogQuantizer`'s folded shift)."""
        return x

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Calibrated buffers may have a shape the fresh module cannot know: adopt it, on the
        # device the module is on (a state loaded from the CPU into a model on a GPU).
        device = self.calibrated.device
        for name in self.lazy_buffers:
            key = prefix + name
            if key in state_dict and getattr(self, name).shape != state_dict[key].shape:
                setattr(self, name, torch.empty_like(state_dict[key], device=device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _set(self, **tensors: Tensor) -> None:
        for name, value in tensors.items():
            setattr(self, name, value.detach().clone())
        self.calibrated.fill_(True)

    def extra_repr(self) -> str:
        return f'bits={self.bits}, calibrated={bool(self.calibrated)}, enabled={self.enabled}'
