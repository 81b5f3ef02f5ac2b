"""The uniform asymmetric quantizer module."""
from typing import Optional

import torch

from torch import Tensor

from mmq.registry import QUANTIZERS
from .base_quantizer import BaseQuantizer
from .uniform import fake_quant_uniform, param_shape, uniform_dequantize, uniform_quantize
from .validation import UNIFORM_BITS, check_finite, check_positive


@QUANTIZERS.register_module()
class UniformQuantizer(BaseQuantizer):
    """Asymmetric uniform fake quantizer with straight-through rounding.

    Args:
        bits (int): Bit width, 2..8.
        ch_axis (int, optional): Axis with independent (scale, zero point): ``None`` per
            tensor, ``0`` per output channel of a weight, ``1`` per head of ``(B, H, N, d)``.
        fixed_zero_point (int, optional): Keep the zero point at this value (``0`` for
            non-negative inputs such as post-ReLU activations).
    """

    lazy_buffers = ('scale', 'zero_point', 'rounding')

    def __init__(self,
                 bits: int,
                 ch_axis: Optional[int] = None,
                 fixed_zero_point: Optional[int] = None) -> None:
        super().__init__(bits, UNIFORM_BITS)
        self.ch_axis = ch_axis
        self.fixed_zero_point = fixed_zero_point

    def set_params(self, scale: Tensor, zero_point: Tensor) -> None:
        """Set calibrated parameters (any shape that broadcasts to the input)."""
        check_positive(scale, 'scale')
        check_finite(zero_point, 'zero_point')
        if scale.shape != zero_point.shape:
            raise ValueError(f'scale {tuple(scale.shape)} and zero_point '
                             f'{tuple(zero_point.shape)} must have the same shape.')
        self._set(scale=scale.float(), zero_point=zero_point.round().float())
        self.rounding = torch.empty(0)  # new parameters: round to nearest again

    def set_from_groups(self, x: Tensor, scale: Tensor, zero_point: Tensor) -> None:
        """Set parameters given per group ``(groups,)`` for inputs shaped like ``x``."""
        shape = param_shape(x, self.ch_axis)
        self.set_params(scale.reshape(shape), zero_point.reshape(shape))

    def set_rounding(self, rounding: Tensor) -> None:
        """Learned rounding (AdaRound): ``floor(x / s) + rounding`` instead of round to
        nearest, for the one tensor (a weight) this quantizer was calibrated on."""
        self.rounding = rounding.detach().to(torch.int8).clone()

    def quantize(self, x: Tensor) -> Tensor:
        """Integer codes of ``x``."""
        if self.rounding.numel():
            qmax = 2**self.bits - 1
            codes = torch.floor(x / self.scale) + self.rounding + self.zero_point
            return codes.clamp(0, qmax)
        return uniform_quantize(x, self.scale, self.zero_point, self.bits)

    def integer_scale(self, x: Tensor) -> Tensor:
        """The scale(s) ``x`` is quantized with: ``self(x)`` is integer codes times them."""
        return self.scale

    def dequantize(self, codes: Tensor) -> Tensor:
        """Real values of integer codes."""
        return uniform_dequantize(codes, self.scale, self.zero_point)

    def forward(self, x: Tensor) -> Tensor:
        if not self.is_active:
            return x
        if self.rounding.numel():
            if self.rounding.shape != x.shape:
                raise ValueError(f'learned rounding of shape {tuple(self.rounding.shape)} '
                                 f'applied to a tensor of shape {tuple(x.shape)}.')
            return self.dequantize(self.quantize(x))
        return fake_quant_uniform(x, self.scale, self.zero_point, self.bits)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, ch_axis={self.ch_axis}'
