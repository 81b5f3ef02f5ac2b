"""``QuantConv2d``: an ``nn.Conv2d`` with per-channel weight and per-tensor input quantizers.
Calibration treats it as a Linear on unfolded input patches."""
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmq.quantizers.layer_schedule import CalibrationProblem
from mmq.quantizers.base_quantizer import BaseQuantizer
from mmq.registry import MODELS
from .quant_linear import sample_rows


@MODELS.register_module()
class QuantConv2d(nn.Conv2d):
    """Conv2d with fake-quantized weight and (optionally) input.

    Build it with :meth:`from_float`; ``input_quantizer=None`` keeps the input float (the
    patch-embedding convolution sees raw pixels).
    """

    weight_quantizer: Optional[BaseQuantizer]
    input_quantizer: Optional[BaseQuantizer]

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer: Optional[BaseQuantizer],
                   input_quantizer: Optional[BaseQuantizer]) -> 'QuantConv2d':
        """Wrap ``conv``'s own parameters (shared, not copied)."""
        if conv.groups != 1:
            raise ValueError(f'QuantConv2d supports groups=1 only, got groups={conv.groups} '
                             f'in {conv}; leave such layers out of the quantization scope.')
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        new._modules = dict(conv._modules)
        new._parameters = dict(conv._parameters)
        new._buffers = dict(conv._buffers)
        new.weight_quantizer = weight_quantizer
        new.input_quantizer = input_quantizer
        return new

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        w = self.weight_quantizer(self.weight) if self.weight_quantizer is not None else self.weight
        return self._conv_forward(x, w, self.bias)

    # calibration -------------------------------------------------------------------------
    def _patch_rows(self, x: Tensor) -> Tensor:
        """``(patches, in * kh * kw)``: ``x`` unfolded as the weight, flattened to
        ``(out, in * kh * kw)``, multiplies it."""
        if self.padding_mode != 'zeros' or isinstance(self.padding, str):
            raise ValueError(f'QuantConv2d calibration needs numeric zero padding, got '
                             f'padding={self.padding!r}, padding_mode={self.padding_mode!r}.')
        patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    def weight_input_rows(self, x: Tensor) -> Tensor:
        """The rows the flattened weight multiplies for input ``x`` (after the input
        quantizer)."""
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return self._patch_rows(x)

    def float_input_rows(self, x: Tensor) -> Tensor:
        """The unquantized input ``x`` unfolded as :meth:`weight_input_rows`."""
        return self._patch_rows(x)

    def sample_inputs(self, args: tuple, num: int, generator: torch.Generator,
                      outliers: int = 0) -> Tensor:
        return sample_rows(self._patch_rows(args[0].detach()), num, generator, outliers)

    def calibration_problem(self, rows: Tensor) -> CalibrationProblem:
        out_ch = self.out_channels
        shape = self.weight.shape
        wq, iq = self.weight_quantizer, self.input_quantizer

        def matrix(b: Tensor) -> Tensor:
            return b.reshape(*b.shape[:-4], out_ch, -1)

        def op(a: Tensor, b: Tensor) -> Tensor:
            return torch.matmul(a, matrix(b).transpose(-1, -2))

        # The input quantizer is per tensor: on unfolded patches it sees the same values.
        return CalibrationProblem(a=rows, b=self.weight.detach().reshape(shape), qa=iq, qb=wq,
                                  op=op, out_axis_a=None, out_axis_b=-1, weight_matrix=matrix)
