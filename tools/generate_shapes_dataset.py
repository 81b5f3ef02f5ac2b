"""Generate the shapes COCO-format instance-segmentation dataset (deterministic from a seed).

Example::

    python tools/generate_shapes_dataset.py data/shapes

(the demo detectors' dataset: 3000 train / 200 val images of 128x160, seed 0).
"""
import argparse
import hashlib
import os.path as osp
import time

from pycocotools.coco import COCO

from mmq.data import generate_shapes_coco


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', help='where images/ and annotations/ go')
    parser.add_argument('--num-train', type=int, default=3000)
    parser.add_argument('--num-val', type=int, default=200)
    parser.add_argument('--height', type=int, default=128)
    parser.add_argument('--width', type=int, default=160)
    parser.add_argument('--max-objects', type=int, default=5)
    parser.add_argument('--radius-range', type=float, nargs=2, default=(0.08, 0.32),
                        help='shape radii as fractions of the shorter side')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    files = generate_shapes_coco(args.out_dir, num_train=args.num_train, num_val=args.num_val,
                                 height=args.height, width=args.width,
                                 max_objects=args.max_objects, seed=args.seed,
                                 radius_range=tuple(args.radius_range))
    for split, path in files.items():
        coco = COCO(path)  # validates the JSON the way every consumer will read it
        with open(path, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        print(f'{split}: {len(coco.getImgIds())} images, {len(coco.getAnnIds())} instances, '
              f'{osp.relpath(path)} sha256 {digest}')
    print(f'generated in {time.perf_counter() - start:.1f} s')


if __name__ == '__main__':
    main()
