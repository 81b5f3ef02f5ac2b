"""The detector-scope stages on a backbone-scope row's backbone: what quantizing the neck and
heads costs, with the backbone held fixed.

    python benchmarks/detector_scope_on_backbone_state.py --row WORK_DIR [--no-box-head]
        [--float-probe]

``WORK_DIR`` is an accuracy-benchmark row at ``scope='backbone'`` that ran the 'calibrate' and
'reconstruct' stages (its ``stage_calibrate.pth`` and ``stage_reconstruct.pth``). The script
runs on that row's backbone what ``scope='detector'`` adds to the pipeline, in the pipeline's
order, with the row's calibration images, seed and schedule:

1. the calibrated backbone (``stage_calibrate.pth``), then the neck and heads calibrated on its
   features (:func:`mmq.calibration.detector_calibration.calibrate_neck_and_heads`), as
   ``run_calibrate`` does;
2. the reconstructed backbone (``stage_reconstruct.pth``, neck and heads kept), then the neck
   reconstructed (:func:`mmq.calibration.reconstruction_stage.reconstruct_neck`) and, unless
   ``--no-box-head``, the box head (``reconstruct.box_head``), towards the original float
   model (the row's checkpoint, also when it ran MR), as ``run_reconstruct`` does;

and evaluates the result (mmdet's metric on the row's test set). A detector-scope row of the
same method and seed trains the same backbone, but block reconstruction is chaotic: float
rounding that differs between two processes (e.g. how the activation store holds its items)
flips rounding decisions, so its backbone may differ; this script holds the backbone fixed and
measures the neck and heads alone. ``--float-probe`` also evaluates the row's backbone with a
float neck and heads (the backbone-scope row itself) in the same process.

Prints box / mask AP; one thread.
"""
import argparse
import os.path as osp
import time

import torch
from mmengine.config import Config

from dinov2_demo import evaluate_runner, row_calibration_batches, row_test_runner
from mmq.calibration.activation_store import ActivationStore
from mmq.calibration.box_head_reconstruction import reconstruct_box_heads
from mmq.calibration.detector_calibration import calibrate_neck_and_heads
from mmq.calibration.quantize import prepare
from mmq.calibration.quantized_state import load_partial_state
from mmq.calibration.reconstruction_stage import reconstruct_neck
from mmq.config import QuantConfig
from mmq.models.transform import quantizers


def load_backbone_state(model: torch.nn.Module, path: str) -> None:
    """Load a backbone-scope stage state into a detector prepared at detector scope: every
    key must load; only the neck's and heads' quantizer buffers may be missing."""
    partial = load_partial_state(path)
    if partial is None:
        raise SystemExit(f'{path} does not exist: run that accuracy-benchmark row first.')
    result = model.load_state_dict(partial['state_dict'], strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f'{path}: unexpected keys {result.unexpected_keys[:5]}')
    wrong = [k for k in result.missing_keys
             if k.startswith('backbone.') or '_quantizer.' not in k]
    if wrong:
        raise RuntimeError(f'{path}: missing keys outside the neck / heads quantizers: '
                           f'{wrong[:5]}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--row', required=True, help="a backbone-scope row's work dir")
    parser.add_argument('--no-box-head', action='store_true',
                        help='reconstruct the neck only (the published pipeline)')
    parser.add_argument('--float-probe', action='store_true',
                        help='also evaluate the backbone with a float neck and heads')
    args = parser.parse_args()
    torch.set_num_threads(1)
    row_cfg = Config.fromfile(osp.join(args.row, 'config.py'))
    qcfg = QuantConfig.from_dict(row_cfg.quant_cfg)
    if qcfg.scope != 'backbone' or 'reconstruct' not in qcfg.stages:
        raise SystemExit(f'{args.row} is not a backbone-scope row with reconstruction.')
    det = qcfg.to_dict()
    det['scope'] = 'detector'
    det['reconstruct'] = dict(det.get('reconstruct') or {}, box_head=not args.no_box_head)
    det_qcfg = QuantConfig.from_dict(det)
    runner, fp_model = row_test_runner(row_cfg, 'mmq_detector_scope_', float_copy=True)
    model = runner.model
    prepare(model, det_qcfg)
    batches = row_calibration_batches(runner, row_cfg)
    names = {id(m): name for name, m in model.named_modules()}
    start = time.perf_counter()
    load_backbone_state(model, osp.join(args.row, 'stage_calibrate.pth'))
    model.eval()
    with torch.no_grad():
        report = calibrate_neck_and_heads(model, batches, det_qcfg, names)
    print(f"neck and heads calibrated: {len(report['layers'])} layers, "
          f"{report['seconds']:.1f} s", flush=True)
    outside = [q for part in (model.neck, model.rpn_head, model.roi_head)
               for q in quantizers(part)]
    # The saved state holds no neck / heads quantizer buffers: their calibration stays.
    load_backbone_state(model, osp.join(args.row, 'stage_reconstruct.pth'))
    model.eval()
    if args.float_probe:
        for q in outside:
            q.enabled = False
        evaluate_runner(runner, 'reconstructed backbone, float neck and heads')
        for q in outside:
            q.enabled = True
    opts = det_qcfg.reconstruct_options()
    store = ActivationStore(2 * 1024**3)
    try:
        for b in batches:
            store.append((b['inputs'], ))
        with torch.no_grad():
            reports = [reconstruct_neck(model, fp_model, store, opts, det_qcfg.seed)]
            if opts.box_head:
                reports += reconstruct_box_heads(model, fp_model, batches, store, opts,
                                                 det_qcfg.seed)
    finally:
        store.close()
    for r in reports:
        print(f"{r['unit']}: MSE {r['loss_before']:.4g} -> {r['loss_after']:.4g} "
              f"(reverted: {r['reverted']}), {r['seconds']:.1f} s", flush=True)
    print(f'detector-scope stages: {time.perf_counter() - start:.1f} s', flush=True)
    model.eval()
    evaluate_runner(runner, 'reconstructed backbone, W4A4 neck and heads (detector scope)')


if __name__ == '__main__':
    main()
