"""The post-GELU AdaLog scale grid on real weights: the ratio grid ``0.25-1.25 x max`` against
the same grid plus P90..P100 of the activations (the reference code's range).

    python benchmarks/post_gelu_scale_grid.py [--bits 4] [--images 8] [--rows 512]

For every block of the ``dinov2`` demo detector's DINOv2 ViT-S/14, takes the float fc2 inputs
of ``--images`` training images at 256x320, samples ``--rows`` tokens (seeded) and searches
the post-GELU AdaLog quantizer (shift, base and scale) with each grid against fc2's output
MSE, as the calibration does. Prints, per block, both losses, the chosen scales as a fraction
of the maximum, and the loss of each on the other ``--rows`` held-out tokens.
"""
import argparse

import torch

from dinov2_demo import float_detector, training_images
from mmq.quantizers import GELU_SHIFT, adalog_bases, fpcs_log, output_mse
from mmq.quantizers.fpcs import LogSchedule
from mmq.quantizers.log_quant import fake_quant_log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--bits', type=int, default=4)
    parser.add_argument('--images', type=int, default=8)
    parser.add_argument('--rows', type=int, default=512)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = float_detector()
    blocks = model.backbone.vit.blocks
    inputs = {i: [] for i in range(len(blocks))}
    for i, block in enumerate(blocks):
        block.mlp.fc2.register_forward_hook(
            lambda mod, inp, out, i=i: inputs[i].append(inp[0].flatten(0, -2)))
    with torch.no_grad():
        for image in training_images(args.images):
            model.backbone(image)
    r, bases = adalog_bases(args.bits)
    bases = torch.tensor(bases)
    grids = dict(ratio=LogSchedule(), quantiles=LogSchedule(scale_quantiles=(0.9, 1.0)))
    print(f'W?A{args.bits} post-GELU AdaLog, fc2 output MSE (search rows / held-out rows)')
    totals = {name: [0.0, 0.0] for name in grids}
    for i, block in enumerate(blocks):
        x = torch.cat(inputs[i])
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(i))
        search, held = x[perm[:args.rows]], x[perm[args.rows:2 * args.rows]]
        w = block.mlp.fc2.weight.detach()
        line = [f'block {i:2d}: max {float(x.max()):7.2f}']
        for name, schedule in grids.items():
            objective = output_mse(lambda xq: xq @ w.t(), search @ w.t())
            res = fpcs_log(search, args.bits, bases, r, objective, shift=GELU_SHIFT,
                           schedule=schedule)
            q, s = int(res.params[0, 0]), float(res.params[0, 1])
            xq = fake_quant_log(held + GELU_SHIFT, torch.tensor(s), args.bits, q, r) - GELU_SHIFT
            held_loss = float(((xq - held) @ w.t()).pow(2).mean())
            totals[name][0] += float(res.loss)
            totals[name][1] += held_loss
            line.append(f'{name} {float(res.loss):.4g} / {held_loss:.4g} '
                        f'(q {q}, s {s / float(search.max() + GELU_SHIFT):.3f} x max)')
        print(', '.join(line), flush=True)
    print('sum over blocks: ' + ', '.join(f'{name} {a:.4g} / {b:.4g}'
                                          for name, (a, b) in totals.items()))


if __name__ == '__main__':
    main()
