"""Process memory while calibration reads spilled block inputs: the resident set before and
after each pass of the first Swin-T block (LayerNorm statistics, sample capture, search),
with and without the store's heap trim (``mmq.calibration.activation_store.release_free_heap``).

    python benchmarks/spilled_store_memory.py [--images 96] [--no-trim]

Stock Swin-T Mask R-CNN backbone (seeded random weights), random 320x480 images, W4A4,
every block input spilled (budget 0); stops after the first Swin block.
"""
import argparse
import tempfile

import torch

import mmq
from mmq.calibration import activation_store, block_calibration
from mmq.config.detector_config import build_detector

STOCK = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'


class _Stop(Exception):
    pass


def rss_mb() -> float:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS')) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=96)
    parser.add_argument('--no-trim', action='store_true')
    args = parser.parse_args()
    if args.no_trim:
        activation_store._malloc_trim = None
    for name in ('_input_channel_ranges', 'capture_samples', 'calibrate_layers'):
        original = getattr(block_calibration, name)

        def timed(*a, _f=original, _name=name, **k):
            before = rss_mb()
            out = _f(*a, **k)
            print(f'{_name}: RSS {before:.0f} -> {rss_mb():.0f} MB', flush=True)
            return out

        setattr(block_calibration, name, timed)

    def unit_done(report):
        print(f"unit {report['unit']} done: RSS {rss_mb():.0f} MB", flush=True)
        if report['index'] >= 1:
            raise _Stop

    torch.manual_seed(0)
    model = build_detector(STOCK)
    images = (torch.randn(1, 3, 320, 480) for _ in range(args.images))
    with tempfile.TemporaryDirectory() as spill:
        try:
            mmq.quantize(model.backbone, images,
                         dict(w_bits=4, a_bits=4, search_rows=64, search_windows=8),
                         activation_budget_bytes=0, spill_dir=spill, on_unit_done=unit_done)
        except _Stop:
            pass


if __name__ == '__main__':
    main()
