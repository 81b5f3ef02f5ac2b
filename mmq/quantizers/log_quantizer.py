"""Logarithmic quantizer modules: AdaLog (searched base) and the log2 / log-sqrt2 baselines."""
from typing import Optional

import torch
from torch import Tensor

from mmq.registry import QUANTIZERS
from .base_quantizer import BaseQuantizer
from .log_quant import (ADALOG_R, adalog_bases, check_base, fake_quant_log, log_dequantize,
                        log_quantize, log_tables)
from .validation import LOG_BITS, check_positive

DEQUANT_MODES = ('table', 'exact')


@QUANTIZERS.register_module()
class LogQuantizer(BaseQuantizer):
    """Per-tensor logarithmic quantizer ``Q(x + shift) - shift`` with base ``2^(q/r)``.

    Args:
        bits (int): Bit width, 2..8.
        r (int): Base denominator.
        q (int): Initial base numerator (searched among ``bases`` by FPCS).
        bases (tuple[int], optional): The ``q`` values a search may choose; default ``(q,)``.
        shift (float): ``c`` in ``Q(x + c) - c``: ``0`` post-Softmax, ``GELU_SHIFT`` post-GELU.
        fixed_scale (float, optional): Keep the scale at this value (``1.0`` post-Softmax).
        dequant (str): Dequantization path in eval mode: ``'table'`` (the integer shift +
            mantissa tables a deployed kernel runs; default) or ``'exact'``. Train mode always
            uses the exact, differentiable path.
        shift_folded (bool): The next layer's bias already absorbed ``-shift`` (bias
            reparameterization): return ``Q(x + shift)`` without subtracting it.
    """

    lazy_buffers = ('scale', )
    # The ``r`` of states saved before ``r`` was (None: the constructor's ``r``).
    legacy_r: Optional[int] = None

    def __init__(self,
                 bits: int,
                 r: int = 1,
                 q: int = 1,
                 bases: Optional[tuple] = None,
                 shift: float = 0.0,
                 fixed_scale: Optional[float] = None,
                 dequant: str = 'table',
                 shift_folded: bool = False) -> None:
        super().__init__(bits, LOG_BITS)
        check_base(q, r)
        if dequant not in DEQUANT_MODES:
            raise ValueError(f'dequant={dequant!r} must be one of {DEQUANT_MODES}.')
        if fixed_scale is not None and not fixed_scale > 0:
            raise ValueError(f'fixed_scale={fixed_scale!r} must be > 0.')
        # ``r`` as a Python int (the hot path divides by it; reading the buffer would sync a
        # GPU on every forward), kept equal to the ``base_denominator`` buffer.
        self._r = int(r)
        self.bases = tuple(bases) if bases is not None else (q, )
        check_base(torch.tensor(self.bases), r)
        self.shift = float(shift)
        self.fixed_scale = fixed_scale
        self.dequant = dequant
        self.register_buffer('q', torch.tensor(int(q)))
        # A buffer, so a saved state keeps the base 2^(q/r) it was calibrated with.
        self.register_buffer('base_denominator', torch.tensor(int(r)))
        # A buffer, so a saved quantized state remembers that the next bias absorbed -shift.
        self.register_buffer('shift_folded', torch.tensor(bool(shift_folded)))

    @property
    def r(self) -> int:
        """The base denominator: the base is ``2^(q/r)``."""
        return self._r

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + 'base_denominator'
        if key not in state_dict and prefix + 'q' in state_dict:
            # Saved before r was: AdaLog had r = 37 at every width then.
            state_dict[key] = torch.tensor(self.legacy_r or self._r)
        saved_r = int(state_dict[key]) if key in state_dict else None
        if saved_r is not None:
            check_base(1, saved_r)  # a positive integer r, before loading it
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if saved_r is not None:
            self._r = saved_r

    def set_params(self, q: int, scale: float) -> None:
        """Set the calibrated base numerator and scale."""
        check_base(int(q), self.r)
        scale_t = torch.as_tensor(float(scale))
        check_positive(scale_t, 'scale')
        self.q.fill_(int(q))
        self._set(scale=scale_t)

    @property
    def use_table(self) -> bool:
        return self.dequant == 'table' and not self.training

    def quantize(self, x: Tensor):
        """Integer codes and in-range mask of ``x + shift``."""
        return log_quantize(x + self.shift, self.scale, self.bits, int(self.q), self.r)

    def dequantize(self, codes: Tensor, mask: Tensor, table: Optional[bool] = None) -> Tensor:
        """Values of codes (``Q(x + shift)``, before subtracting the shift)."""
        table = self.use_table if table is None else table
        return log_dequantize(codes, mask, self.scale, self.bits, int(self.q), self.r, table)

    def tables(self):
        """The deployed kernel's shift and mantissa tables for the calibrated base."""
        return log_tables(self.bits, int(self.q), self.r)

    def forward(self, x: Tensor) -> Tensor:
        if not self.is_active:
            return x
        offset = 0.0 if bool(self.shift_folded) else self.shift
        return fake_quant_log(x, self.scale, self.bits, self.q.to(x.dtype), self.r,
                              self.use_table, shift=self.shift, offset=offset)

    def float_path(self, x: Tensor) -> Tensor:
        """Float ``x`` in this quantizer's output convention: ``x + shift`` once the next
        layer's bias absorbed ``-shift`` (otherwise a dropped element would carry ``-shift``
        into that layer), else ``x``."""
        return x + self.shift if self.is_active and bool(self.shift_folded) else x

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, base=2^({int(self.q)}/{self.r}), shift={self.shift}, '
                f'dequant={self.dequant}')


@QUANTIZERS.register_module()
class AdaLogQuantizer(LogQuantizer):
    """AdaLog: base ``2^(q/r)`` with ``q`` searched; up to 4 bits the published ``r = 37``,
    ``q`` in ``[10, 137]`` (``q = 37`` is log2), finer bases from 5 bits on
    (:func:`~mmq.quantizers.log_quant.adalog_bases`).

    Post-Softmax: ``AdaLogQuantizer(bits, fixed_scale=1.0)``; post-GELU:
    ``AdaLogQuantizer(bits, shift=GELU_SHIFT)``; ``base_range='published'`` keeps the
    published bases at every width. Other args as :class:`LogQuantizer`.
    """

    legacy_r = ADALOG_R

    def __init__(self, bits: int, base_range: str = 'extended', **kwargs) -> None:
        r, bases = adalog_bases(bits, base_range)
        kwargs.setdefault('q', r)
        super().__init__(bits, r=r, bases=bases, **kwargs)


@QUANTIZERS.register_module()
class Log2Quantizer(LogQuantizer):
    """Fixed base-2 log quantizer (baseline)."""

    def __init__(self, bits: int, **kwargs) -> None:
        super().__init__(bits, r=1, q=1, **kwargs)


@QUANTIZERS.register_module()
class LogSqrt2Quantizer(LogQuantizer):
    """Fixed base-sqrt(2) log quantizer (baseline)."""

    def __init__(self, bits: int, **kwargs) -> None:
        super().__init__(bits, r=2, q=1, **kwargs)
