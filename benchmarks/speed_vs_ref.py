"""Calibration speed of this tree against an earlier git ref, in one benchmark run.

    python benchmarks/speed_vs_ref.py [--ref f84a052] [--images 32] [--height 800 --width 1333]
                                      [--threads 2] [--config ...] [--checkpoint ...]
                                      [--out ...]

By default the stock Swin-T Mask R-CNN backbone
(``mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``, seeded random weights built once and
handed to both runs; ``--checkpoint`` hands them a trained detector's weights instead),
generated shapes images, W4A4 AdaLog + FPCS, 1 round, default search budget. The ref's
``mmq`` package is extracted with ``git archive`` to a temporary folder and imported from
there (``PYTHONPATH`` comes before the editable install); each side runs in its own
process, one after the other, with the same thread count. Prints the wall time of each, their
ratio, and each unit's output SQNR on both sides (the calibration report's
``output_sqnr_db``: the mean over the first images of the unit's quantized-vs-float output
SQNR, same definition in both trees).

The default ref is the main of 2026-11-27 (``f84a052``), the code the calibration-speed issue
measured (494 s for 32 images at 800x1333 on this machine).
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
STOCK = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'


def _this_tree_build_detector():
    """``build_detector`` of this tree's ``mmq/config/detector_config.py``, loaded from its
    file: importing it as ``mmq.config...`` in the ref's process would mix this tree's
    ``mmq.config`` package with the ref's other modules (the ref may not have one)."""
    import importlib.util
    path = osp.join(ROOT, 'mmq', 'config', 'detector_config.py')
    spec = importlib.util.spec_from_file_location('_mmq_bench_detector_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_detector


def child(args: argparse.Namespace) -> None:
    """One side: load the shared weights and images, calibrate, write the report."""
    import time

    import torch

    import mmq
    build_detector = _this_tree_build_detector()
    torch.set_num_threads(args.threads)
    model = build_detector(args.config)
    model.load_state_dict(torch.load(osp.join(args.data, 'model.pth'), weights_only=True))
    images = torch.load(osp.join(args.data, 'images.pth'), weights_only=True)
    qcfg = dict(w_bits=4, a_bits=4, rounds=1)
    start = time.perf_counter()
    report = mmq.quantize(model.backbone, images, qcfg,
                          activation_budget_bytes=int(args.budget_gb * 1024**3),
                          spill_dir=osp.join(args.data, f'spill-{os.getpid()}'))
    seconds = time.perf_counter() - start
    units = [dict(unit=u['unit'], seconds=u['seconds'], output_sqnr_db=u['output_sqnr_db'])
             for u in report['units']]
    with open(args.result, 'w') as f:
        json.dump(dict(mmq=mmq.__file__, seconds=seconds, units=units), f, indent=1)


def prepare(data: str, args: argparse.Namespace) -> None:
    """The shared inputs: the detector weights (seeded random, or ``--checkpoint``'s) and
    preprocessed images."""
    import torch

    from mmq.config.detector_config import build_detector
    from mmq.float_checkpoint import load_checkpoint_without_code
    sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
    from calibration_benchmark import load_images
    torch.manual_seed(0)
    model = build_detector(args.config)
    if args.checkpoint:
        ckpt, _ = load_checkpoint_without_code(args.checkpoint)
        model.load_state_dict(ckpt.get('state_dict', ckpt))  # strict: the config's model
    torch.save(model.state_dict(), osp.join(data, 'model.pth'))
    images = load_images(osp.join(data, 'shapes'), args.images, args.height, args.width)
    torch.save(images, osp.join(data, 'images.pth'))


def run_side(label: str, pythonpath: str, data: str, args: argparse.Namespace) -> dict:
    result = osp.join(data, f'{label}.json')
    env = dict(os.environ, PYTHONPATH=pythonpath + os.pathsep + os.environ.get('PYTHONPATH', ''),
               OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, osp.abspath(__file__), '--child', '--data', data, '--result', result,
           '--threads', str(args.threads), '--budget-gb', str(args.budget_gb),
           '--config', osp.abspath(args.config) if osp.isfile(args.config) else args.config]
    print(f'{label}: calibrating ...', flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=data)
    with open(result) as f:
        out = json.load(f)
    expected = osp.join(pythonpath, 'mmq')
    if osp.dirname(out['mmq']) != expected:
        raise RuntimeError(f'{label} imported {out["mmq"]}, expected the package in {expected}')
    print(f"{label}: {out['seconds']:.1f} s ({out['mmq']})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ref', default='f84a052')
    parser.add_argument('--config', default=STOCK, help='detector config (its backbone is '
                        'calibrated; both trees must be able to build it)')
    parser.add_argument('--checkpoint', help='detector weights to calibrate (default: seeded '
                        'random weights)')
    parser.add_argument('--images', type=int, default=32)
    parser.add_argument('--height', type=int, default=800)
    parser.add_argument('--width', type=int, default=1333)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--budget-gb', type=float, default=2.0)
    parser.add_argument('--out', default='work_dirs/speed_vs_ref.json')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--data', help=argparse.SUPPRESS)
    parser.add_argument('--result', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        ref_tree = osp.join(tmp, 'ref')
        os.makedirs(ref_tree)
        archive = subprocess.run(['git', 'archive', args.ref, 'mmq'], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(['tar', '-x', '-C', ref_tree], input=archive, check=True)
        data = osp.join(tmp, 'data')
        os.makedirs(data)
        print(f'preparing {args.images} images of {args.height}x{args.width} ...', flush=True)
        prepare(data, args)
        ref = run_side(f'ref {args.ref}', ref_tree, data, args)
        new = run_side('this tree', ROOT, data, args)
    ratio = ref['seconds'] / new['seconds']
    print(f"\nref {args.ref}: {ref['seconds']:.1f} s, this tree: {new['seconds']:.1f} s, "
          f'speed-up {ratio:.2f}x ({args.images} images {args.height}x{args.width}, '
          f'{args.threads} thread(s))')
    print('| unit | ref s | this s | ref SQNR dB | this SQNR dB | diff dB |')
    print('|---|---|---|---|---|---|')
    worst = 0.0
    ref_units = {u['unit']: u for u in ref['units']}
    if set(ref_units) != {u['unit'] for u in new['units']}:
        raise RuntimeError(f"the two trees calibrate different units: {sorted(ref_units)} vs "
                           f"{sorted(u['unit'] for u in new['units'])}")
    for b in new['units']:
        a = ref_units[b['unit']]
        diff = b['output_sqnr_db'] - a['output_sqnr_db']
        worst = max(worst, abs(diff))
        print(f"| {a['unit']} | {a['seconds']:.1f} | {b['seconds']:.1f} | "
              f"{a['output_sqnr_db']:.3f} | {b['output_sqnr_db']:.3f} | {diff:+.3f} |")
    print(f'largest unit SQNR difference: {worst:.3f} dB')
    os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(ref=args.ref, ref_result=ref, result=new, speed_up=ratio,
                       images=args.images, input=f'{args.height}x{args.width}',
                       threads=args.threads, config=args.config, checkpoint=args.checkpoint,
                       max_sqnr_diff_db=worst), f, indent=1)


if __name__ == '__main__':
    main()
