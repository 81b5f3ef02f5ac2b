"""Peak memory of one block reconstruction step on a full-size detector, with the step's
batch in one forward / backward pass or split into passes (``reconstruct.pass_bytes``).

    python benchmarks/reconstruction_memory.py [--images 2] [--height 800 --width 1333]
        [--unit 1] [--iters 2] [--threads 2]

The stock Swin-T Mask R-CNN backbone (seeded random weights), W4A4 with AdaLog post-Softmax /
post-GELU quantizers calibrated by MinMax on one image (fast; the quantizer modules, and so
the memory, are those of an FPCS run), unit ``--unit`` (1: the first stage-0 block, the
largest activations) reconstructed for ``--iters`` steps on a batch of ``--images`` image
states. Each setting runs in its own process; each prints the rise of its peak resident
memory (VmHWM) over the resident memory just before the reconstruction, and the seconds per
step, and the passes the planner chose (items per pass and the bytes one item keeps for
backward, by input shape).
"""
import argparse
import json
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
STOCK = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'


def _status_gb(field: str) -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024**2
    raise RuntimeError(f'{field} not in /proc/self/status (this benchmark needs Linux)')


def float_unit_stores(backbone, index: int, images: list):
    """Unit ``index`` of a quantized ``backbone`` and two stores of its float-chain inputs
    and float outputs on ``images`` (what :func:`reconstruct_unit` is handed, with the float
    inputs standing in for the quantized chain's)."""
    import torch

    from mmq.calibration.activation_store import ActivationStore
    from mmq.calibration.units import build_units
    from mmq.models import set_quant_enabled
    units = build_units(backbone)
    unit = units[index]
    q_store, out_store = ActivationStore(8 * 1024**3), ActivationStore(8 * 1024**3)
    with torch.no_grad():
        set_quant_enabled(backbone, False)
        for img in images:
            state = (img, )
            for u in units[:index]:
                state = u.run(state)
            q_store.append(state)
            out = unit.run(state)
            out_store.append(out if isinstance(out, tuple) else (out, ))
        set_quant_enabled(backbone, True)
    return unit, q_store, out_store


def child(args: argparse.Namespace) -> None:
    import torch

    import mmq
    from mmq.calibration.block_reconstruction import reconstruct_unit
    from mmq.config.aphq_options import ReconstructOptions
    from mmq.config.detector_config import build_detector
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = build_detector(STOCK).backbone
    backbone.eval()
    g = torch.Generator().manual_seed(0)
    pad_h, pad_w = -(-args.height // 32) * 32, -(-args.width // 32) * 32
    images = [torch.randn(1, 3, pad_h, pad_w, generator=g) for _ in range(args.images)]
    mmq.quantize(backbone, images[:1], dict(w_bits=4, a_bits=4, calibrator='minmax'))
    unit, q_store, out_store = float_unit_stores(backbone, args.unit, images)
    pass_bytes = None if args.pass_bytes == 'none' else int(args.pass_bytes)
    opts = ReconstructOptions(iters=args.iters, batch=args.images, pass_bytes=pass_bytes)
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident memory
    before = _status_gb('VmRSS')
    start = time.perf_counter()
    report = reconstruct_unit(unit, q_store, q_store, out_store, None, opts,
                              torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    print(json.dumps(dict(unit=unit.name, pass_bytes=args.pass_bytes,
                          items_per_pass=report['items_per_pass'] or 'all',
                          backward_bytes_per_item=report['backward_bytes_per_item'],
                          peak_rise_gb=_status_gb('VmHWM') - before, rss_before_gb=before,
                          seconds=seconds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--images', type=int, default=2)
    parser.add_argument('--height', type=int, default=800)
    parser.add_argument('--width', type=int, default=1333)
    parser.add_argument('--unit', type=int, default=1)
    parser.add_argument('--iters', type=int, default=2)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--pass-bytes', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pass_bytes is not None:
        child(args)
        return
    from mmq.config.aphq_options import ReconstructOptions
    rows = []
    for setting in ('none', str(ReconstructOptions.pass_bytes)):
        cmd = [sys.executable, __file__, '--pass-bytes', setting] + [
            f'--{k}={getattr(args, k)}' for k in ('images', 'height', 'width', 'unit', 'iters',
                                                  'threads')]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f'\n{args.images} images of {args.height}x{args.width}, unit {rows[0]["unit"]}, '
          f'{args.iters} steps')
    print('| pass_bytes | items per pass | peak RSS rise | s per step |')
    print('|---|---|---|---|')
    for r in rows:
        print(f"| {r['pass_bytes']} | {r['items_per_pass']} | {r['peak_rise_gb']:.2f} GB | "
              f"{r['seconds'] / args.iters:.1f} |")


if __name__ == '__main__':
    main()
