"""Where a block-reconstruction step spends its time: operator profile of the ``dinov2``
demo detector's block reconstruction.

    python benchmarks/reconstruction_step_profile.py [--unit 1] [--iters 30] [--images 4]
        [--threads 1] [--rows 25]

The committed ``dinov2`` detector's backbone (DINOv2 ViT-S/14, 12 blocks) is quantized at
W4A4 with the ``-tokens`` roles and MinMax ranges on ``--images`` training images at 256x320
(fast: the quantizer modules, and so the step's operators, are those of an FPCS run); unit
``--unit`` (1: block 0) is then reconstructed for a few warm-up steps and for ``--iters``
profiled steps (batch 2, QDrop, learned activation scales, AdaRound, as the stage runs).
Prints the seconds per step (timed without the profiler, then one more profiled run) and
the operators with the most self CPU time, grouped into matrix products and the rest.
``--compile`` runs the unit's forward through ``torch.compile`` (measured, not used by mmq).
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import mmq
from mmq.calibration.block_reconstruction import reconstruct_unit
from mmq.config.aphq_options import ReconstructOptions

from dinov2_demo import float_detector, training_images
from reconstruction_memory import float_unit_stores

PRODUCTS = ('aten::mm', 'aten::bmm', 'aten::addmm', 'aten::matmul', 'aten::linear',
            'aten::convolution', 'aten::_convolution', 'aten::mkldnn_convolution')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--unit', type=int, default=1)
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--images', type=int, default=4)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rows', type=int, default=25, help='operators printed')
    parser.add_argument('--compile', action='store_true',
                        help="run the unit's forward through torch.compile (graph breaks at "
                        "the quantizers' Python scalars), to measure what fusing would gain")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = float_detector().backbone
    images = training_images(args.images)
    mmq.quantize(backbone, images, dict(w_bits=4, a_bits=4, calibrator='minmax',
                                        token_roles=['ln_input', 'proj_input', 'qk']))
    unit, q_store, out_store = float_unit_stores(backbone, args.unit, images)

    def run(iters: int) -> None:
        reconstruct_unit(unit, q_store, q_store, out_store, None,
                         ReconstructOptions(iters=iters, batch=2),
                         torch.Generator().manual_seed(0))

    if args.compile:  # an experiment: the unit's forward through torch.compile
        unit.module.forward = torch.compile(unit.module.forward, dynamic=True)
    run(4)  # warm-up (allocator, first-call costs, compiling)
    start = time.perf_counter()
    run(args.iters)
    seconds = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(args.iters)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    products = sum(e.self_cpu_time_total for e in events if e.key in PRODUCTS)
    print(events.table(sort_by='self_cpu_time_total', row_limit=args.rows))
    print(f'{unit.name}{" (compiled forward)" if args.compile else ""}: {args.iters} steps '
          f'in {seconds:.1f} s ({seconds / args.iters * 1000:.0f} ms / step, {args.threads} '
          f'thread(s)); profiled self CPU time: matrix products {products / max(total, 1):.0%}'
          f', everything else {1 - products / max(total, 1):.0%}')


if __name__ == '__main__':
    main()
