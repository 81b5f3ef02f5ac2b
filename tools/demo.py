"""The demo: quantize the committed demo Swin Mask R-CNN at W4A4 (AdaLog + FPCS) and print
float vs quantized box / mask AP on the generated shapes val split.

    python tools/demo.py [--config CFG] [--checkpoint CKPT] [--work-dir DIR]

Generates the dataset when it is absent, checks the checkpoint's sha256, evaluates the float
model with tools/test.py and the quantized one with tools/quantize.py (the calibration hook),
each in its own process with its log streamed.
"""
import argparse
import hashlib
import json
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FLOAT_CFG = 'configs/demo/mask-rcnn_swin-demo_fpn_shapes.py'
QUANT_CFG = 'configs/demo/mask-rcnn_swin-demo_w4a4-adalog_shapes.py'
CHECKPOINT = 'checkpoints/demo/mask-rcnn_swin-demo_shapes.pth'
DATA = 'data/shapes'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--float-config', default=FLOAT_CFG)
    parser.add_argument('--config', default=QUANT_CFG, help='the quantization config')
    parser.add_argument('--checkpoint', default=CHECKPOINT)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    return parser.parse_args()


def check_sha256(path: str) -> None:
    sums = osp.join(osp.dirname(path), 'SHA256SUMS')
    if not osp.isfile(path):
        raise SystemExit(f'{path} is missing: the demo checkpoints are committed with the '
                         'repository (git lfs is not used); check out the full tree.')
    if not osp.isfile(sums):
        return
    expected = {line.split()[1]: line.split()[0] for line in open(sums) if line.strip()}
    name = osp.basename(path)
    if name in expected:
        with open(path, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != expected[name]:
            raise SystemExit(f'{path} has sha256 {digest}, SHA256SUMS says {expected[name]}: '
                             'the file is damaged or was replaced.')
        print(f'[demo] {path}: sha256 ok', flush=True)


def step(title: str, cmd: list) -> None:
    print(f'\n[demo] {title}\n[demo] $ {" ".join(cmd)}', flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f'[demo] {title}: {time.perf_counter() - start:.0f} s', flush=True)


def main() -> None:
    args = parse_args()
    py = sys.executable
    if not osp.isfile(osp.join(ROOT, DATA, 'annotations/instances_val.json')):
        step('generating the shapes dataset', [py, 'tools/generate_shapes_dataset.py', DATA])
    check_sha256(osp.join(ROOT, args.checkpoint))
    float_dir = osp.join(args.work_dir, 'float')
    quant_dir = osp.join(args.work_dir, 'w4a4')
    step('evaluating the float detector',
         [py, 'tools/test.py', args.float_config, args.checkpoint, '--work-dir', float_dir])
    step('quantizing (calibration hook) and evaluating',
         [py, 'tools/quantize.py', args.config, args.checkpoint, '--work-dir', quant_dir])
    rows = []
    for name, d in (('float', float_dir), ('W4A4 AdaLog+FPCS', quant_dir)):
        with open(osp.join(ROOT, d, 'metrics.json')) as f:
            m = json.load(f)['metrics']
        rows.append((name, m['coco/bbox_mAP'], m['coco/segm_mAP']))
    print('\n[demo] demo Swin Mask R-CNN on the generated shapes val split (mmdet CocoMetric)')
    print(f"{'model':<20} {'box AP':>7} {'mask AP':>8}")
    for name, box, mask in rows:
        print(f'{name:<20} {box:7.3f} {mask:8.3f}')
    print(f'[demo] box AP kept: {rows[1][1] / max(rows[0][1], 1e-9):.1%}, mask AP kept: '
          f'{rows[1][2] / max(rows[0][2], 1e-9):.1%}; calibration report: '
          f'{osp.join(quant_dir, "calibration_report.json")}')


if __name__ == '__main__':
    main()
