"""How far a calibrated ``dinov2`` detector's quantized backbone moves when only the float
summation order changes: the same state and images run with 1 and with 2 CPU threads.

    python benchmarks/thread_sensitivity.py --state WORK_DIR/stage_calibrate.pth [--images 2]

Prints, per pyramid level, the SQNR (dB) of the 2-thread output against the 1-thread one, in
float mode and in quantized mode, then the first quantizer whose output moves by more than
``--jump`` (a code that changed) and the largest output change of every later block's first
activation quantizer: a float-rounding difference that flips one code grows, block by block, into a
difference of the size of the quantization error itself.
"""
import argparse

import torch

from dinov2_demo import calibrated_detector, training_images
from mmq.models.transform import quantizers
from mmq.quantizers.objectives import sqnr_db


def run(backbone, image, threads: int, quantized: bool, record: dict = None):
    torch.set_num_threads(threads)
    for q in quantizers(backbone):
        q.enabled = quantized
    names = {id(m): n for n, m in backbone.named_modules()}
    handles = []
    if record is not None:
        def hook(module, args, out):
            record[names[id(module)]] = (args[0].detach().clone(), out.detach().clone())
        handles = [q.register_forward_hook(hook) for q in quantizers(backbone)]
    with torch.no_grad():
        out = backbone(image)
    for h in handles:
        h.remove()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--state', required=True)
    parser.add_argument('--images', type=int, default=2)
    parser.add_argument('--jump', type=float, default=1e-3)
    args = parser.parse_args()
    backbone = calibrated_detector(args.state).backbone
    for image_index, image in enumerate(training_images(args.images, split='val')):
        for quantized in (False, True):
            one, two = (run(backbone, image, t, quantized) for t in (1, 2))
            print(f'image {image_index} {"quantized" if quantized else "float    "}: '
                  '2 vs 1 threads, SQNR per level (dB) '
                  f'{[round(sqnr_db(a, b), 1) for a, b in zip(one, two)]}', flush=True)
    rec1, rec2 = {}, {}
    image = training_images(1, split='val')[0]
    run(backbone, image, 1, True, rec1)
    run(backbone, image, 2, True, rec2)
    first, seen = None, set()
    for name, (x1, o1) in rec1.items():
        x2, o2 = rec2[name]
        moved = float((o1 - o2).abs().max())
        if first is None and moved > args.jump:
            first = name
            print(f'first code change: {name}: input moved {float((x1 - x2).abs().max()):.1e}, '
                  f'output {moved:.3f} ({int((o1 - o2).abs().gt(args.jump).sum())} element(s))')
        block = name.split('.')[2] if name.startswith('vit.blocks.') else name.split('.')[0]
        if first is not None and block not in seen and not name.endswith('weight_quantizer'):
            seen.add(block)
            print(f'  {name}: output moved up to {moved:.3f} '
                  f'(|output| up to {float(o1.abs().max()):.1f})')


if __name__ == '__main__':
    main()
