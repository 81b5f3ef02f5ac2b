"""Fused candidate scoring for the uniform FPCS search (``torch.compile``, eager fallback).

Scoring a beam of ``K`` uniform candidates on their own tensor (the self-MSE that initialises
every layer) is quantize -> dequantize -> squared error -> mean over ``K`` copies of the
tensor; eager PyTorch writes each intermediate ``(K, *x.shape)`` tensor to memory, a compiled
kernel reads ``x`` once per candidate and writes only the ``(K, groups)`` losses (about 18x
faster for a 1152 x 384 weight on one CPU thread). The compiled and eager paths compute the
same formula; they may differ in the last float bit (division vs. multiplication by the
reciprocal), so chosen parameters agree up to ties (tested).

``MMQ_COMPILE=0`` (or a failed compile, logged once) uses the eager path.

Every kernel takes its tensors in one canonical rank (:func:`canonical_groups`: ``x`` as
``(1, pre, groups, post)``, parameters as ``(K, 1, groups, 1)``), so one compiled graph
serves weights, rows and per-head operands alike: a new rank would recompile, and past
dynamo's recompile limit the kernel silently ran eager.
"""
import math
import os
from typing import Callable, Dict, Optional

import torch
from mmengine.logging import print_log
from torch import Tensor

from .uniform import fake_quant_span, grid_params

_compiled: Dict[Callable, Callable] = {}  # eager kernel -> its compiled version
_disabled = False


def compile_enabled() -> bool:
    """Whether the fused path is used (``MMQ_COMPILE`` not ``0`` and no failed compile)."""
    return not _disabled and os.environ.get('MMQ_COMPILE', '1') != '0'


def canonical_groups(x: Tensor, ch_axis: Optional[int], leading: int = 0) -> Tensor:
    """``x`` viewed as ``(K, pre, groups, post)`` (no copy when contiguous): ``groups`` the
    size of ``ch_axis`` of ``x.shape[leading:]`` (1 when ``None``), ``pre`` / ``post`` the
    elements before / after it, ``K`` the first dim when ``leading=1`` (else 1)."""
    k = x.shape[0] if leading else 1
    shape = x.shape[leading:]
    if ch_axis is None:
        return x.reshape(k, 1, 1, -1)
    axis = ch_axis % len(shape)
    return x.reshape(k, math.prod(shape[:axis]), shape[axis], -1)


def uniform_self_mse_eager(x: Tensor, scale: Tensor, zero_point: Tensor,
                           qmax: float) -> Tensor:
    """Per candidate and group, the mean of ``(fake_quant(x) - x)^2``: ``x`` canonical
    ``(1, pre, G, post)``, parameters ``(K, 1, G, 1)``; returns ``(K, G)``."""
    return grouped_mse_eager(uniform_fake_quant_eager(x, scale, zero_point, qmax), x)


def uniform_fake_quant_eager(x: Tensor, scale: Tensor, zero_point: Tensor,
                             qmax: float) -> Tensor:
    """The no-autograd uniform fake-quant of ``K`` candidates (canonical shapes as
    :func:`uniform_self_mse_eager`): ``(K, pre, G, post)``."""
    return _signed_codes(x, scale, zero_point, qmax) * scale


def _signed_codes(x: Tensor, scale: Tensor, zero_point: Tensor, qmax: float) -> Tensor:
    """``clamp(round(x / s), -z, qmax - z)``, the codes both uniform kernels start from."""
    return torch.clamp(torch.round(x / scale), -zero_point, qmax - zero_point)


# Graphs each kernel may hold. Dynamic shapes still specialise sizes 0 / 1, views and a few
# size thresholds, so one kernel sees up to ~16 variants on a detector backbone; past dynamo's
# default limit (8) the new variants would silently run eager.
RECOMPILE_LIMIT = 64


def _run(eager: Callable, *args):
    """``eager(*args)`` through its cached ``torch.compile`` version when compiling is
    enabled; on a failed compile, warn once and use eager from then on."""
    global _disabled
    if compile_enabled():
        try:
            if eager not in _compiled:
                _compiled[eager] = torch.compile(eager, dynamic=True)
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return _compiled[eager](*args)
        except Exception as e:  # noqa: BLE001  (no compiler, unsupported device, ...)
            _disabled = True
            print_log(f'[mmq] torch.compile of the FPCS scoring failed ({type(e).__name__}: '
                      f'{str(e)[:200]}); using the eager path.', logger='current', level=30)
    return eager(*args)


# A no-autograd log fake-quant in a forward pass (a calibration pass, a fake-quant evaluation)
# goes through the compiled kernel from this many elements on: there most of the quantizer
# time is spent on large activations, where one fused pass is several times faster than
# eager's chain of ops (a 67,200 x 384 post-GELU map: 4x). Smaller tensors stay eager, so
# tests and toy models compile nothing for it. (The uniform no-autograd path is already one
# allocation and in-place ops; compiled it gained 1.0-1.45x, so it stays eager.)
FORWARD_MIN_ELEMENTS = 1 << 16


def fused_forward(x: Tensor, *params: Tensor) -> bool:
    """Whether a no-autograd fake-quant of ``x`` with per-tensor ``params`` (one element
    each) runs through a compiled kernel."""
    return (x.numel() >= FORWARD_MIN_ELEMENTS and compile_enabled()
            and all(torch.as_tensor(p).numel() == 1 for p in params))


def uniform_self_mse(x: Tensor, scale: Tensor, zero_point: Tensor, qmax: float) -> Tensor:
    """:func:`uniform_self_mse_eager`, compiled when possible."""
    return _run(uniform_self_mse_eager, x, scale, zero_point, qmax)


def uniform_fake_quant(x: Tensor, scale: Tensor, zero_point: Tensor, qmax: float) -> Tensor:
    """:func:`uniform_fake_quant_eager`, compiled when possible."""
    return _run(uniform_fake_quant_eager, x, scale, zero_point, qmax)


def token_fake_quant_eager(x: Tensor, clip: Tensor, qmax: Tensor) -> Tensor:
    """The no-autograd dynamic per-token fake-quant of ``K`` clip ratios (the formula of
    :func:`mmq.quantizers.token_fake_quant`): ``x`` canonical ``(1, pre, F, post)`` with each
    token's (group's) features on ``F``, ``clip`` ``(K, 1, 1, 1)``; returns
    ``(K, pre, F, post)``. ``qmax`` is a 0-dim tensor: compiled, a Python float there was
    baked into the graph (a 4-bit call after a 3-bit one reused 3-bit codes; tested)."""
    scale, zero_point = grid_params(x.amin(2, keepdim=True) * clip,
                                    x.amax(2, keepdim=True) * clip, qmax)
    return uniform_fake_quant_eager(x, scale, zero_point, qmax)


def token_fake_quant_offset_eager(x: Tensor, clip: Tensor, qmax: Tensor) -> Tensor:
    """:func:`token_fake_quant_eager` on the grid from each group's clipped minimum to its
    clipped maximum (``zero_point='float'`` of :class:`mmq.quantizers.TokenQuantizer`)."""
    return fake_quant_span(x, clip, qmax, 2)


def token_fake_quant(x: Tensor, clip: Tensor, qmax: Tensor, float_zero_point: bool = False
                     ) -> Tensor:
    """:func:`token_fake_quant_eager` (:func:`token_fake_quant_offset_eager` with
    ``float_zero_point``), compiled when possible (from ``FORWARD_MIN_ELEMENTS`` outputs
    on)."""
    kernel = token_fake_quant_offset_eager if float_zero_point else token_fake_quant_eager
    if x.numel() * clip.shape[0] < FORWARD_MIN_ELEMENTS:
        return kernel(x, clip, qmax)
    return _run(kernel, x, clip, qmax)


def uniform_codes_eager(x: Tensor, scale: Tensor, zero_point: Tensor, qmax: float) -> Tensor:
    """The signed integer codes ``clamp(round(x / s), -z, qmax - z)`` of ``K`` candidates
    (what :func:`uniform_fake_quant_eager` multiplies by the scale), as int8: canonical
    shapes as there; needs ``qmax <= 127``."""
    return _signed_codes(x, scale, zero_point, qmax).to(torch.int8)


def uniform_codes(x: Tensor, scale: Tensor, zero_point: Tensor, qmax: float) -> Tensor:
    """:func:`uniform_codes_eager`, compiled when possible."""
    return _run(uniform_codes_eager, x, scale, zero_point, qmax)


def scaled_products_mse_eager(acc: Tensor, scale: Tensor, fixed: Tensor, ref: Tensor,
                              group_dim: int) -> Tensor:
    """Per candidate and group, the mean of ``(acc * fixed * scale - ref)^2``: integer
    products ``acc`` ``(K, *out)`` (int32, any strides), the candidates' scales ``(K, ...)``
    with their groups along ``group_dim`` (``0``: one per candidate), the fixed operand's
    scale and the float output ``ref`` broadcasting as ``(1, *out)``; returns ``(K, G)``."""
    err = (acc.to(scale.dtype) * fixed * scale - ref).pow(2)
    loss = err.mean(dim=[d for d in range(1, err.dim()) if d != group_dim])
    return loss if group_dim else loss.unsqueeze(1)


def scaled_products_mse(acc: Tensor, scale: Tensor, fixed: Tensor, ref: Tensor,
                        group_dim: int) -> Tensor:
    """:func:`scaled_products_mse_eager`, compiled when possible."""
    return _run(scaled_products_mse_eager, acc, scale, fixed, ref, group_dim)


def grouped_mse_eager(out: Tensor, ref: Tensor) -> Tensor:
    """Per candidate and group, the mean of ``(out - ref)^2``: ``out`` canonical
    ``(K, pre, G, post)``, ``ref`` ``(1, pre, G, post)``; returns ``(K, G)``."""
    return (out - ref).pow(2).mean(dim=(1, 3))


def grouped_mse(out: Tensor, ref: Tensor) -> Tensor:
    """:func:`grouped_mse_eager`, compiled when possible."""
    return _run(grouped_mse_eager, out, ref)


def log_fake_quant_eager(x: Tensor, scale: Tensor, coef: Tensor, values: Tensor,
                         max_code: int, tiny: float, offset: float = 0.0,
                         shift: float = 0.0) -> Tensor:
    """The no-autograd log fake-quant of ``K`` candidates (as
    :func:`mmq.quantizers.log_quant.fake_quant_log` computes it): codes
    ``round(log2(x / s) * coef)`` (``coef = -r / q`` per candidate, broadcast like ``scale``)
    index each candidate's row of ``values`` (``(K, 2^b + 1)``, the last entry 0 for codes
    past the range); ``shift`` is added to ``x`` and ``offset`` subtracted from the result
    in the same pass (a shifted quantizer's ``Q(x + c) - c``: ``shift = offset = c``)."""
    x_t = torch.clamp((x + shift if shift else x) / scale, tiny, 1.0)  # x (1, N), params (K, 1)
    idx = torch.clamp(torch.round(torch.log2(x_t) * coef), max=max_code).long()
    k = values.shape[0]
    if k == 1:
        out = values[0][idx]
    else:
        idx = idx.expand(k, *idx.shape[1:]) if idx.shape[0] == 1 else idx
        out = values.gather(1, idx.reshape(k, -1)).reshape(idx.shape)
    return out * scale - offset if offset else out * scale


def log_fake_quant(x: Tensor, scale: Tensor, coef: Tensor, values: Tensor, max_code: int,
                   tiny: float, offset: float = 0.0, shift: float = 0.0) -> Tensor:
    """:func:`log_fake_quant_eager`, compiled when possible."""
    return _run(log_fake_quant_eager, x, scale, coef, values, max_code, tiny, offset, shift)


def log_self_mse_eager(x: Tensor, scale: Tensor, coef: Tensor, values: Tensor, max_code: int,
                       tiny: float) -> Tensor:
    """Per candidate, the mean of ``(log_fake_quant(x) - x)^2`` over ``x`` ``(1, N)`` (the
    arguments as :func:`log_fake_quant_eager`'s); returns ``(K, 1)``."""
    err = log_fake_quant_eager(x, scale, coef, values, max_code, tiny) - x
    return err.pow(2).mean(dim=1, keepdim=True)


def log_self_mse(x: Tensor, scale: Tensor, coef: Tensor, values: Tensor, max_code: int,
                 tiny: float) -> Tensor:
    """:func:`log_self_mse_eager`, compiled when possible: one pass per candidate, no
    ``(K, N)`` intermediates."""
    return _run(log_self_mse_eager, x, scale, coef, values, max_code, tiny)
