"""Error-compensated weight rounding of a calibrated unit (``quant_cfg.weight_rounding='gptq'``).

After a unit's search has fixed every grid, one quantized pass over the unit's inputs
accumulates, for each weight-quantized Linear and Conv2d, ``H = sum_t x_t x_t^T`` over every
token (unfolded patch, for a convolution) of every calibration item, ``x_t`` being what the
layer's weight (flattened to ``(out, fan_in)``) multiplies: its input after its own input
quantizer, the post-GELU shift included. Each weight's codes are then chosen by
:func:`mmq.quantizers.gptq.gptq_rounding` on that grid and kept as the weight quantizer's
rounding; the float weights are untouched. All the unit's Hessians come from one pass with
every weight rounded to nearest (GPTQ's "sequential" variant would rerun the unit after each
layer). The neck and heads (``scope='detector'``) keep rounding to nearest.
"""
from typing import Dict, List, Union

import torch
from torch import Tensor

from mmq.models.quant_conv import QuantConv2d
from mmq.models.quant_linear import QuantLinear
from mmq.quantizers.gptq import gptq_rounding
from mmq.quantizers.uniform_quantizer import UniformQuantizer
from .activation_store import ActivationStore
from .units import Unit


WeightLayer = Union[QuantLinear, QuantConv2d]


def gptq_layers(unit: Unit) -> List[WeightLayer]:
    """The unit's Linears / Conv2ds whose calibrated per-output-channel uniform weight grid
    GPTQ can round on."""
    return [m for m in unit.module.modules()
            if isinstance(m, (QuantLinear, QuantConv2d))
            and isinstance(m.weight_quantizer, UniformQuantizer)
            and m.weight_quantizer.is_active and m.weight_quantizer.ch_axis == 0]


class InputStats:
    """``h = sum_t xq_t xq_t^T`` over the rows ``xq`` a layer's weight multiplies; with
    ``float_target``, also ``c = sum_t xq_t x_t^T`` and ``f = sum_t x_t x_t^T`` for its
    unquantized input rows ``x`` (float64 sums)."""

    def __init__(self, float_target: bool) -> None:
        self.float_target = float_target
        self.h = self.c = self.f = None

    @staticmethod
    def _add(total, x: Tensor, y: Tensor) -> Tensor:
        part = (x.T @ y).double()
        return part if total is None else total.add_(part)

    def add(self, layer: WeightLayer, x: Tensor) -> None:
        xq = layer.weight_input_rows(x).float()
        self.h = self._add(self.h, xq, xq)
        if self.float_target:
            xf = layer.float_input_rows(x).float()
            self.c = self._add(self.c, xq, xf)
            self.f = self._add(self.f, xf, xf)


def input_stats(unit: Unit, store: ActivationStore, layers: List[WeightLayer],
                float_target: bool = False) -> Dict[int, InputStats]:
    """``id(layer) -> InputStats`` over one quantized pass of ``store``."""
    found: Dict[int, InputStats] = {}

    def hook(layer: WeightLayer, args):
        found.setdefault(id(layer), InputStats(float_target)).add(layer, args[0].detach())

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        with torch.no_grad():
            for item in store:
                unit.run(item)
    finally:
        for h in handles:
            h.remove()
    return found


def round_unit_weights(unit: Unit, store: ActivationStore, damp: float,
                       names: Dict[int, str], target: str = 'quantized') -> List[dict]:
    """Set every GPTQ-able weight of ``unit`` to its error-compensated codes; per-layer
    reports (the output error on the calibration inputs with nearest and with GPTQ
    rounding). ``target='float'`` measures the error against the float output on the
    unquantized inputs (``gptq_target``). A layer whose GPTQ error is not below nearest's
    keeps rounding to nearest."""
    layers = gptq_layers(unit)
    if not layers:
        return []
    stats = input_stats(unit, store, layers, float_target=target == 'float')
    reports = []
    for layer in layers:
        if id(layer) not in stats:
            continue  # not on this unit's forward path (the block calibration says so)
        q, weight, st = layer.weight_quantizer, layer.weight, stats[id(layer)]
        out_ch = weight.shape[0]
        offsets, nearest, gptq = gptq_rounding(
            weight.reshape(out_ch, -1), st.h, q.scale.reshape(out_ch, 1),
            q.zero_point.reshape(out_ch, 1), q.bits, damp, cross=st.c, float_hessian=st.f)
        kept = gptq < nearest
        if kept:
            q.set_rounding(offsets.reshape(weight.shape))
        reports.append(dict(name=names.get(id(layer), '?'), output_error_nearest=nearest,
                            output_error_gptq=gptq, kept=kept))
    return reports
