"""``QuantConv2d``: an ``nn.Conv2d`` with per-channel weight and per-tensor (or per-pixel)
input quantizers. Calibration treats it as a Linear on unfolded input patches."""
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmq.quantizers.layer_schedule import CalibrationProblem
from mmq.quantizers.base_quantizer import BaseQuantizer
from mmq.quantizers.token_quantizer import TokenQuantizer
from mmq.registry import MODELS
from .quant_linear import sample_rows


def memory_format(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-d tensor laid out so (and not also contiguous), else
    ``torch.contiguous_format``."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@MODELS.register_module()
class QuantConv2d(nn.Conv2d):
    """Conv2d with fake-quantized weight and (optionally) input.

    Build it with :meth:`from_float`; ``input_quantizer=None`` keeps the input float (the
    patch-embedding convolution sees raw pixels). A :class:`TokenQuantizer` input quantizer
    treats every pixel as a token (its channels, in groups of ``group_size``, as features):
    an implicit-GEMM kernel with channels-last patches reduces over ``(kh, kw, C)``, so a
    group of channels of one pixel is a block of its reduction axis. Calibration then
    unfolds patches pixel-major, so the same groups see the same values.
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

    @property
    def per_pixel_input(self) -> bool:
        """Whether the input is quantized per pixel (a :class:`TokenQuantizer`)."""
        return isinstance(self.input_quantizer, TokenQuantizer)

    def quantize_input(self, x: Tensor) -> Tensor:
        """``x`` (N, C, H, W) through the input quantizer (per pixel: channels as features)."""
        q = self.input_quantizer
        if q is None:
            return x
        if self.per_pixel_input:
            if q.feature_axis != -1:
                raise ValueError('a per-pixel conv input quantizer takes the channels as its '
                                 f'last axis (feature_axis=-1), got {q.feature_axis}.')
            # Back to x's memory format: the channels-last view the quantizer leaves would
            # make the conv's output channels-last too, which mmcv's CPU RoIAlign reads as
            # if contiguous (garbage RoI features behind a per-pixel quantized FPN).
            return q(x.movedim(1, -1)).movedim(-1, 1).contiguous(
                memory_format=memory_format(x))
        return q(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.quantize_input(x)
        w = self.weight_quantizer(self.weight) if self.weight_quantizer is not None else self.weight
        return self._conv_forward(x, w, self.bias)

    # calibration -------------------------------------------------------------------------
    def _patch_rows(self, x: Tensor, pixel_major: bool = False) -> Tensor:
        """``(patches, in * kh * kw)``: ``x`` unfolded as the weight, flattened to
        ``(out, in * kh * kw)``, multiplies it; ``pixel_major``: columns ordered
        ``(kh, kw, in)`` instead (a pixel's channels contiguous)."""
        if self.padding_mode != 'zeros' or isinstance(self.padding, str):
            raise ValueError(f'QuantConv2d calibration needs numeric zero padding, got '
                             f'padding={self.padding!r}, padding_mode={self.padding_mode!r}.')
        patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        if pixel_major:  # (N, C * kh * kw, L) -> (N, L, kh * kw, C)
            patches = patches.reshape(patches.shape[0], x.shape[1], -1, patches.shape[-1])
            return patches.permute(0, 3, 2, 1).reshape(-1, patches.shape[1] * patches.shape[2])
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    def weight_input_rows(self, x: Tensor) -> Tensor:
        """The rows the flattened weight multiplies for input ``x`` (after the input
        quantizer)."""
        return self._patch_rows(self.quantize_input(x))

    def float_input_rows(self, x: Tensor) -> Tensor:
        """The unquantized input ``x`` unfolded as :meth:`weight_input_rows`."""
        return self._patch_rows(x)

    def sample_inputs(self, args: tuple, num: int, generator: torch.Generator,
                      outliers: int = 0) -> Tensor:
        return sample_rows(self._patch_rows(args[0].detach(), self.per_pixel_input), num,
                           generator, outliers)

    def calibration_problem(self, rows: Tensor) -> CalibrationProblem:
        out_ch = self.out_channels
        shape = self.weight.shape
        wq, iq = self.weight_quantizer, self.input_quantizer

        pixel_major = self.per_pixel_input  # rows from sample_inputs: (kh, kw, C) columns

        def matrix(b: Tensor) -> Tensor:
            if pixel_major:
                b = b.movedim(-3, -1)
            return b.reshape(*b.shape[:-4], out_ch, -1)

        def op(a: Tensor, b: Tensor) -> Tensor:
            return torch.matmul(a, matrix(b).transpose(-1, -2))

        # A per-tensor input quantizer sees the same values on unfolded patches; a per-pixel
        # one sees each pixel's channels as consecutive groups of a row.
        return CalibrationProblem(a=rows, b=self.weight.detach().reshape(shape), qa=iq, qb=wq,
                                  op=op, out_axis_a=None, out_axis_b=-1, weight_matrix=matrix)
