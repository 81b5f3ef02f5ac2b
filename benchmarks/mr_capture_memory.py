"""Process memory of MR's row capture (one float pass over every calibration image, keeping
seeded token rows of every MLP's input): the resident set before and after, against the
bytes of rows kept.

    python benchmarks/mr_capture_memory.py [--images 1024] [--per-image-tensors]

The dinov2 demo detector (ViT-S/14, 12 MLPs), random 256x320 images, 16,384 rows per MLP
as in the ``aphq`` presets. ``--per-image-tensors`` keeps each image's rows as its own
small tensor, concatenated at the end (mmq before the capture wrote into buffers
allocated once): for comparison, run each mode in its own process.
"""
import argparse
import math

import torch

from mmq.calibration.aph import task_for
from mmq.calibration.mlp_reconstruction import _capture_mlp_inputs
from mmq.config.detector_config import build_detector
from mmq.models.adapters import find_mlps
from mmq.utils import seeded_generator

CONFIG = 'configs/demo/mask-rcnn_dinov2-vits14_fpn_shapes.py'


def rss_mb() -> float:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS')) / 1024


def capture_per_image_tensors(mlps, forward, images, rows, generator):
    """The same rows, kept as one tensor per image and MLP until the end."""
    per_image = max(1, math.ceil(rows / len(images)))
    got = {id(m.module): [] for m in mlps}

    def hook(module, args):
        flat = args[0].detach().reshape(-1, args[0].shape[-1])
        idx = torch.randperm(flat.shape[0], generator=generator)[:per_image]
        got[id(module)].append((flat[idx], idx % args[0].reshape(
            args[0].shape[0], -1, args[0].shape[-1]).shape[1]))

    handles = [m.module.register_forward_pre_hook(hook) for m in mlps]
    with torch.no_grad():
        for img in images:
            forward(img)
    for h in handles:
        h.remove()
    return [(torch.cat([x for x, _ in got[id(m.module)]]),
             torch.cat([p for _, p in got[id(m.module)]])) for m in mlps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', type=int, default=1024)
    parser.add_argument('--rows', type=int, default=16384)
    parser.add_argument('--per-image-tensors', action='store_true')
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_detector(CONFIG).eval()
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, 256, 320, generator=g) for _ in range(args.images)]
    forward, _, _ = task_for(model)
    mlps = find_mlps(model.backbone)
    capture = capture_per_image_tensors if args.per_image_tensors else _capture_mlp_inputs
    before = rss_mb()
    samples = capture(mlps, forward, images, args.rows, seeded_generator(0, 'mr'))
    after = rss_mb()
    kept = sum(x.numel() * x.element_size() + p.numel() * p.element_size()
               for x, p in samples) / 2**20
    mode = 'per-image tensors' if args.per_image_tensors else 'buffers (mmq)'
    print(f'{mode}: {args.images} images, {len(mlps)} MLPs x {samples[0][0].shape[0]} rows: '
          f'RSS {before:.0f} -> {after:.0f} MB (+{after - before:.0f} MB), rows kept '
          f'{kept:.0f} MB', flush=True)


if __name__ == '__main__':
    main()
