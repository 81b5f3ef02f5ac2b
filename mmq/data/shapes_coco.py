"""A deterministic COCO-format instance-segmentation dataset of coloured shapes.

Categories are polygon shapes (circle, triangle, square, star, hexagon) in random colours,
sizes and rotations over a noisy, gradient background, with overlaps (later shapes occlude
earlier ones: their visible mask is what is annotated). Segmentations are polygons of the
visible region (RLE would also do); boxes are the visible masks' bounds.
"""
import json
import os
import os.path as osp
from typing import Dict, List

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CATEGORIES = ['circle', 'triangle', 'square', 'star', 'hexagon']


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if kind == 'circle':
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        radii = np.full_like(t, r)
    elif kind == 'star':
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    else:
        n = dict(triangle=3, square=4, hexagon=6)[kind]
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        radii = np.full_like(t, r)
    t = t + angle
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], 1).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, w)[None, :, None]
    img = c0 * (1 - ramp) + c1 * ramp
    img = img + rng.normal(0, 12, (h, w, 3))
    return np.clip(np.broadcast_to(img, (h, w, 3)), 0, 255).astype(np.uint8)


def _image(rng: np.random.Generator, h: int, w: int, max_objects: int):
    img = _background(rng, h, w).copy()
    masks: List[np.ndarray] = []
    labels: List[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(CATEGORIES)))
        r = float(rng.uniform(0.06, 0.25) * min(h, w))
        cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
        poly = _polygon(CATEGORIES[label], cx, cy, r, float(rng.uniform(0, 2 * np.pi)))
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 1)
        colour = rng.integers(0, 256, 3)
        texture = rng.normal(0, float(rng.uniform(0, 30)), (h, w, 3))
        shape_px = np.clip(colour + texture, 0, 255).astype(np.uint8)
        img[m > 0] = shape_px[m > 0]
        for prev in masks:  # the new shape occludes what it covers
            prev[m > 0] = 0
        masks.append(m)
        labels.append(label)
    return img, masks, labels


def _annotations(masks, labels, image_id: int, next_id: int) -> List[Dict]:
    anns = []
    for m, label in zip(masks, labels):
        if m.sum() < 16:
            continue  # fully (or almost) occluded
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polys = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        if not polys:
            continue
        rle = mask_utils.encode(np.asfortranarray(m))
        x, y, bw, bh = mask_utils.toBbox(rle).tolist()
        anns.append(dict(id=next_id + len(anns), image_id=image_id, category_id=label + 1,
                         segmentation=polys, area=float(mask_utils.area(rle)),
                         bbox=[x, y, bw, bh], iscrowd=0))
    return anns


def generate_shapes_coco(out_dir: str,
                         num_train: int = 200,
                         num_val: int = 50,
                         height: int = 256,
                         width: int = 320,
                         max_objects: int = 6,
                         seed: int = 0) -> Dict[str, str]:
    """Write ``out_dir/{train,val}/*.png`` and ``out_dir/annotations/instances_{split}.json``.

    Returns the annotation file of each split. Same arguments, same bytes.
    """
    if num_train < 0 or num_val < 0 or height < 32 or width < 32:
        raise ValueError(f'need num_train, num_val >= 0 and an image of at least 32x32, got '
                         f'{num_train}, {num_val}, {height}x{width}.')
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(CATEGORIES)]
    files = {}
    for split, count, split_seed in (('train', num_train, seed), ('val', num_val, seed + 1)):
        rng = np.random.default_rng(split_seed)
        os.makedirs(osp.join(out_dir, split), exist_ok=True)
        images, anns = [], []
        for i in range(count):
            img, masks, labels = _image(rng, height, width, max_objects)
            name = f'{i:06d}.png'
            cv2.imwrite(osp.join(out_dir, split, name), img)
            images.append(dict(id=i + 1, file_name=name, height=height, width=width))
            anns += _annotations(masks, labels, i + 1, len(anns) + 1)
        path = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        with open(path, 'w') as f:
            json.dump(dict(images=images, annotations=anns, categories=categories), f)
        files[split] = path
    return files
