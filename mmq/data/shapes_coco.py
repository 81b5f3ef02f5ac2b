"""A deterministic COCO-format instance-segmentation dataset of textured shapes.

Categories are polygon shapes (circle, triangle, square, star, hexagon) with random colours,
textures (flat, noise, stripes, two-tone gradient), sizes (a 7x range) and rotations, drawn
over varied backgrounds (gradients, noise, stripes, checkerboards) with unannotated clutter
(lines, small blobs and arcs). Later shapes occlude earlier ones: each annotation is the
*visible* mask. Segmentations are polygons of the visible region; boxes are its bounds.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from mmq.utils import write_json

CATEGORIES = ['circle', 'triangle', 'square', 'star', 'hexagon']


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float,
             aspect: float = 1.0) -> np.ndarray:
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
    x, y = radii * np.cos(t) * aspect, radii * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """An (h, w, 3) float texture around colour ``base``."""
    kind = int(rng.integers(4))
    img = np.broadcast_to(base.astype(np.float32), (h, w, 3)).copy()
    if kind == 1:  # noise
        img += rng.normal(0, float(rng.uniform(5, 35)), (h, w, 3))
    elif kind == 2:  # stripes
        period = float(rng.uniform(4, 24))
        theta = float(rng.uniform(0, np.pi))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = (np.cos(theta) * xx + np.sin(theta) * yy) / period
        img += (np.sin(2 * np.pi * phase)[..., None] * rng.uniform(15, 60, 3)).astype(np.float32)
    elif kind == 3:  # gradient towards a second colour
        other = rng.integers(0, 256, 3).astype(np.float32)
        ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        img = img * (1 - ramp) + other * ramp
    return img


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = int(rng.integers(4))
    c0 = rng.integers(0, 256, 3).astype(np.float32)
    if kind == 0:  # horizontal gradient + noise
        c1 = rng.integers(0, 256, 3).astype(np.float32)
        ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
        img = c0 * (1 - ramp) + c1 * ramp + rng.normal(0, 12, (h, w, 3))
    elif kind == 1:  # checkerboard
        c1 = rng.integers(0, 256, 3).astype(np.float32)
        cell = int(rng.integers(8, 48))
        yy, xx = np.mgrid[0:h, 0:w]
        board = (((yy // cell) + (xx // cell)) % 2)[..., None].astype(np.float32)
        img = c0 * (1 - board) + c1 * board + rng.normal(0, 8, (h, w, 3))
    else:  # noise / stripes textures
        img = _texture(rng, h, w, c0)
        img += rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _clutter(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    """Unannotated distractors: lines, small blobs and arcs."""
    h, w = img.shape[:2]
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(3))
        p0 = (int(rng.integers(w)), int(rng.integers(h)))
        if kind == 0:
            p1 = (int(rng.integers(w)), int(rng.integers(h)))
            cv2.line(img, p0, p1, colour, int(rng.integers(1, 4)))
        elif kind == 1:
            cv2.circle(img, p0, int(rng.integers(2, 6)), colour, -1)
        else:
            axes = (int(rng.integers(6, 30)), int(rng.integers(6, 30)))
            cv2.ellipse(img, p0, axes, float(rng.uniform(0, 360)), 0,
                        float(rng.uniform(60, 200)), colour, int(rng.integers(1, 3)))


def _image(rng: np.random.Generator, h: int, w: int, max_objects: int,
           radius_range: Tuple[float, float]) -> Tuple[np.ndarray, List[np.ndarray], List[int]]:
    img = _background(rng, h, w)
    _clutter(rng, img, int(rng.integers(0, 6)))
    masks: List[np.ndarray] = []
    labels: List[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(CATEGORIES)))
        lo, hi = radius_range
        r = float(np.exp(rng.uniform(np.log(lo), np.log(hi))) * min(h, w))
        cx, cy = rng.uniform(r * 0.5, w - r * 0.5), rng.uniform(r * 0.5, h - r * 0.5)
        aspect = float(rng.uniform(0.8, 1.25))
        poly = _polygon(CATEGORIES[label], cx, cy, r, float(rng.uniform(0, 2 * np.pi)), aspect)
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 1)
        x0, y0, bw, bh = cv2.boundingRect(m)  # texture only the shape's box
        if bw == 0 or bh == 0:
            continue
        crop = m[y0:y0 + bh, x0:x0 + bw] > 0
        tex = np.clip(_texture(rng, bh, bw, rng.integers(0, 256, 3)), 0, 255).astype(np.uint8)
        img[y0:y0 + bh, x0:x0 + bw][crop] = tex[crop]
        for prev in masks:  # the new shape occludes what it covers
            prev[m > 0] = 0
        masks.append(m)
        labels.append(label)
    _clutter(rng, img, int(rng.integers(0, 3)))  # a few distractors on top of shapes
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
                         seed: int = 0,
                         radius_range: Tuple[float, float] = (0.04, 0.28)) -> Dict[str, str]:
    """Write ``out_dir/{train,val}/*.png`` and ``out_dir/annotations/instances_{split}.json``.

    ``radius_range``: shape radii as fractions of the image's shorter side (log-uniform).
    Returns the annotation file of each split. Same arguments, same bytes.
    """
    if not 0 < radius_range[0] <= radius_range[1] <= 0.5:
        raise ValueError(f'radius_range={radius_range} must satisfy 0 < lo <= hi <= 0.5.')
    if num_train < 0 or num_val < 0 or height < 32 or width < 32 or max_objects < 1:
        raise ValueError(f'need num_train, num_val >= 0, max_objects >= 1 and an image of at '
                         f'least 32x32, got {num_train}, {num_val}, {max_objects}, '
                         f'{height}x{width}.')
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(CATEGORIES)]
    files = {}
    for split, count, split_seed in (('train', num_train, seed), ('val', num_val, seed + 1)):
        rng = np.random.default_rng(split_seed)
        os.makedirs(osp.join(out_dir, split), exist_ok=True)
        images, anns = [], []
        for i in range(count):
            img, masks, labels = _image(rng, height, width, max_objects, radius_range)
            name = f'{i:06d}.png'
            cv2.imwrite(osp.join(out_dir, split, name), img)
            images.append(dict(id=i + 1, file_name=name, height=height, width=width))
            anns += _annotations(masks, labels, i + 1, len(anns) + 1)
        path = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        # Atomic: a half-written split never looks complete.
        write_json(path, dict(images=images, annotations=anns, categories=categories), None)
        files[split] = path
    return files
