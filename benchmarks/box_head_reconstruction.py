"""What the W4A4 RoI box head costs at detector scope, and what reconstructing it wins back.

    python benchmarks/box_head_reconstruction.py --row WORK_DIR [--eval-before]
        [--probe [PART ...]] [--rois 128] [--iters N] [--seed N] [--no-reconstruct]

``WORK_DIR`` is an accuracy-benchmark row at detector scope that ran the 'reconstruct' stage
(its ``stage_reconstruct.pth``: backbone blocks and neck reconstructed, RPN and RoI heads at
their calibration, as the published pipeline leaves them). The script

- with ``--probe``, evaluates that state with each part's quantizers switched off in turn
  (``rpn``, ``box`` head, ``mask`` head, ``neck``, then ``all`` four at once: the row's
  backbone with a float neck and heads; ``--probe all`` runs that one only): which part's
  quantization costs the AP;
- unless ``--no-reconstruct``, reconstructs the box head(s) on the row's own calibration
  images and seed (:func:`mmq.calibration.box_head_reconstruction.reconstruct_box_heads`,
  the row's reconstruction schedule, ``reconstruct.box_head=True``), towards the original
  float model's head outputs (the float checkpoint, also when the row ran MR), and
  evaluates it.

Prints box / mask AP on the shapes val set (mmdet's metric); one thread.
"""
import argparse
import os.path as osp
import time

import torch

from dinov2_demo import evaluate_runner, row_calibration_batches, row_runner
from mmq.calibration.activation_store import ActivationStore
from mmq.calibration.box_head_reconstruction import reconstruct_box_heads
from mmq.config import QuantConfig
from mmq.models.transform import quantizers

PARTS = ('rpn', 'box', 'mask', 'neck', 'all')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--row', required=True, help="a detector-scope row's work dir")
    parser.add_argument('--rois', type=int, default=128, help='RoIs per image')
    parser.add_argument('--iters', type=int, help="steps (default: the row's schedule)")
    parser.add_argument('--eval-before', action='store_true', help='evaluate the row first')
    parser.add_argument('--probe', nargs='*', choices=PARTS,
                        help='these parts float in turn (no name: every one)')
    parser.add_argument('--seed', type=int, help="reconstruction seed (default: the row's)")
    parser.add_argument('--no-reconstruct', action='store_true',
                        help='only --eval-before / --probe')
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = osp.join(args.row, 'stage_reconstruct.pth')
    runner, partial, row_cfg, fp_model = row_runner(args.row, state, 'mmq_box_head_',
                                                    float_copy=True)
    qcfg = QuantConfig.from_dict(partial['quant_cfg'])
    if qcfg.scope != 'detector':
        raise SystemExit(f'{args.row} is a {qcfg.scope}-scope row: its heads are float.')
    model = runner.model
    if args.eval_before:
        evaluate_runner(runner, 'as saved')
    if args.probe is not None:
        parts = dict(rpn=[model.rpn_head], box=[model.roi_head.bbox_head],
                     mask=[model.roi_head.mask_head], neck=[model.neck])
        parts['all'] = [model.neck, model.rpn_head, model.roi_head]
        for name in args.probe or PARTS:
            modules = parts[name]
            qs = [q for m in modules for q in quantizers(m)]
            for q in qs:
                q.enabled = False
            evaluate_runner(runner, 'neck and heads float' if name == 'all' else f'{name} float')
            for q in qs:
                q.enabled = True
    if args.no_reconstruct:
        return
    batches = row_calibration_batches(runner, row_cfg)
    opts = qcfg.reconstruct_options()
    opts.box_head, opts.box_head_rois = True, args.rois
    if args.iters:
        opts.iters = args.iters
    start = time.perf_counter()
    store = ActivationStore(2 * 1024**3)
    try:
        with torch.no_grad():
            reports = reconstruct_box_heads(model, fp_model, batches, store, opts,
                                            qcfg.seed if args.seed is None else args.seed)
    finally:
        store.close()
    for r in reports:
        print(f"{r['unit']}: MSE {r['loss_before']:.4g} -> {r['loss_after']:.4g} "
              f"(reverted: {r['reverted']}), {len(batches)} images x {args.rois} RoIs, "
              f'{opts.iters} steps, {time.perf_counter() - start:.1f} s', flush=True)
    evaluate_runner(runner, 'box head reconstructed')


if __name__ == '__main__':
    main()
