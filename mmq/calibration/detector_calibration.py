"""Calibration of the quantized layers outside the backbone (``scope='detector'``): FPN, RPN
and RoI-head convolutions and linears, from one pass of the detector over the calibration
batches with the backbone already quantized."""
import time
from typing import Dict, Sequence

from torch import nn

from mmq.config.quant_config import QuantConfig
from mmq.models.transform import QUANT_LAYERS
from mmq.utils import seeded_generator
from .block_calibration import calibrate_layers, capture_samples


def calibrate_neck_and_heads(model: nn.Module, batches: Sequence[dict], qcfg: QuantConfig,
                             names: Dict[int, str], logger=None) -> dict:
    """Capture every uncalibrated quantized layer's inputs in one predict pass per batch (the
    layers still float), then calibrate each layer on them. Returns a unit-style report."""
    start = time.perf_counter()
    backbone_layers = set(model.backbone.modules())
    layers = [
        m for m in model.modules()
        if isinstance(m, QUANT_LAYERS) and m not in backbone_layers
    ]
    generator = seeded_generator(qcfg.seed, 'detector')

    def run_all() -> int:
        for batch in batches:
            model.predict(batch['inputs'], batch['data_samples'])
        return len(batches)

    samples = capture_samples(layers, run_all, qcfg, generator, max(1, len(batches)))
    reports = calibrate_layers(layers, samples, qcfg, names, 'neck and heads')
    seconds = time.perf_counter() - start
    if logger is not None:
        after = sum(r['sqnr_db'] for r in reports) / max(1, len(reports))
        logger.info(f'[mmq] neck and heads: {len(reports)} layers, {seconds:.1f} s, mean layer '
                    f'SQNR {after:.2f} dB')
    return dict(stage='calibrate', unit='neck_and_heads', index=-1, seconds=seconds, unit_passes=1,
                output_sqnr_db=float('nan'), layers=reports, spilled_items=0)
