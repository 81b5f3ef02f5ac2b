"""Does empirical bias correction win back the 4-bit activations' loss? A probe on a calibrated
``dinov2`` detector (an accuracy-benchmark row's saved stage), evaluated by mmdet's metric.

    python benchmarks/bias_correction_probe.py --row WORK_DIR [--state WORK_DIR/stage_calibrate.pth]
        [--images 32] [--mode none|global]

Empirical bias correction (beyond the published methods; Nagel et al.'s data-free form
estimated on data): after calibration, every weight-quantized Linear / Conv of the backbone,
in forward order, gets a per-output-channel offset, added only while it quantizes, equal to
the float model's mean output on ``--images`` training images minus the quantized model's
(with the offsets of the layers before it already applied). It removes the systematic part
of the quantization error (clipped heavy tails, the weight rounding error times the input's
mean) that every token shares. The offsets live in forward hooks here: the probe measures
before mmq grows an option for it. ``--mode none`` evaluates the state as saved (the row's
own AP, a check that the probe evaluates like ``tools/quantize.py``). Prints the box / mask
AP on the shapes val set; one thread.
"""
from typing import Dict, List

import torch
from torch import Tensor, nn

from dinov2_demo import run_state_probe
from mmq.models.quant_conv import QuantConv2d
from mmq.models.quant_linear import QuantLinear
from mmq.models.transform import quantizers


class _Reached(Exception):
    """Stops a forward once the layer being corrected has produced its output."""


def _channel_mean(out: Tensor) -> Tensor:
    dims = (0, 2, 3) if out.dim() == 4 else tuple(range(out.dim() - 1))
    return out.double().mean(dim=dims)


def bias_correct(backbone: nn.Module, images: List[Tensor]) -> Dict[int, Tensor]:
    """Per-channel offsets (``id(layer) -> (C,)``), applied through forward hooks while the
    layer's weight quantizer is enabled."""
    layers = [m for m in backbone.modules() if isinstance(m, (QuantLinear, QuantConv2d))
              and m.weight_quantizer is not None]
    every = list(quantizers(backbone))
    offsets: Dict[int, Tensor] = {}

    def apply(module, args, out):
        delta = offsets.get(id(module))
        if delta is None or not module.weight_quantizer.enabled:
            return out
        return out + (delta.view(1, -1, 1, 1) if out.dim() == 4 else delta)

    for layer in layers:
        layer.register_forward_hook(apply)

    def means(quantized: bool, stop_at: nn.Module = None) -> Dict[int, List[Tensor]]:
        found: Dict[int, List[Tensor]] = {}

        def record(module, args, out):
            found.setdefault(id(module), []).append(_channel_mean(out))
            if module is stop_at:
                raise _Reached

        targets = layers if stop_at is None else [stop_at]
        handles = [m.register_forward_hook(record) for m in targets]
        for q in every:
            q.enabled = quantized
        try:
            with torch.no_grad():
                for image in images:
                    try:
                        backbone(image)
                    except _Reached:
                        pass
        finally:
            for h in handles:
                h.remove()
            for q in every:
                q.enabled = True
        return found

    float_means = means(False)
    for layer in layers:
        quant_mean = torch.stack(means(True, layer)[id(layer)]).mean(0)
        offsets[id(layer)] = (torch.stack(float_means[id(layer)]).mean(0) - quant_mean).float()
    return offsets


def main() -> None:
    run_state_probe(__doc__, 'global',
                    lambda model, images: bias_correct(model.backbone, images), 'mmq_bias_probe_')


if __name__ == '__main__':
    main()
