"""Synthetic, learnable depth data in the layout of mmseg's ``NYUDataset`` (NYU-Depth-v2 after
``tools/dataset_converters/nyu.py``).

``root/nyu/images/{train,test}/<scene>_<seq>_<frame>.jpg`` (test: ``<scene>_<frame>.jpg``) with
``annotations/...png``: 16-bit depth in millimetres, 0 where there is no measurement, 480x640 as NYU's, so
mmseg's ``LoadDepthAnnotation(depth_rescale_factor=1e-3)`` reads metres and ``DepthMetric``'s NYU crop
applies. The scene (one of ``NYUDataset``'s 27 names) is the file name's prefix, as ``NYUDataset`` reads it;
one training image has a name it does not know (id -1).

Each picture is a box-shaped room seen from inside (floor, ceiling, walls, back wall) with a few boxes
standing on the floor; the room's depth range depends on the scene, the brightness falls with depth (each
surface has its own hue) and textures shrink with it, so depth is learnable from the image (and a broken
pipeline does not learn it).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

#: NYU's image size (rows, columns)
NYU_SIZE = (480, 640)
#: the scenes the synthetic rooms use, with their back-wall distance range in metres
SCENES = {'bathroom': (2.0, 3.0), 'bedroom': (3.0, 4.5), 'kitchen': (3.0, 5.0), 'living_room': (4.5, 7.0),
          'office': (4.0, 6.0), 'classroom': (6.0, 9.0)}
UNKNOWN_SCENE = 'corridor'  # not in NYUDataset's classes: category id -1


def _room(rng: np.random.Generator, h: int, w: int, far: float) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 image, depth in metres) of a room whose back wall is ``far`` metres away."""
    f = 0.8 * w  # focal length in pixels
    cy, cx = h / 2 + rng.uniform(-0.05, 0.05) * h, w / 2 + rng.uniform(-0.05, 0.05) * w
    half_h, half_w = rng.uniform(1.2, 1.6), rng.uniform(1.5, 2.5)  # camera to floor/ceiling, side walls
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    ry, rx = (yy - cy) / f, (xx - cx) / f  # ray directions at unit depth
    with np.errstate(divide='ignore'):
        candidates = [np.where(np.abs(ry) > 1e-6, half_h / np.abs(ry), np.inf),  # floor / ceiling
                      np.where(np.abs(rx) > 1e-6, half_w / np.abs(rx), np.inf),  # side walls
                      np.full((h, w), far)]  # back wall
    depth = np.minimum.reduce(candidates)
    surface = np.argmin(np.stack(candidates), axis=0)  # 0 floor/ceiling, 1 walls, 2 back wall
    for _ in range(rng.integers(1, 4)):  # boxes standing on the floor, nearer than the back wall
        z = rng.uniform(1.0, far * 0.8)
        bx, bw, bh = rng.uniform(-half_w, half_w), rng.uniform(0.3, 0.9), rng.uniform(0.4, 1.2)
        x0, x1 = cx + f * (bx - bw) / z, cx + f * (bx + bw) / z
        y0, y1 = cy + f * (half_h - bh) / z, cy + f * half_h / z
        box = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1) & (depth > z)
        depth[box], surface[box] = z, 3
    base = np.array([[150, 150, 160], [90, 170, 200], [200, 190, 180], [60, 90, 190]], np.float64)
    base += rng.normal(0, 12, base.shape)
    tint = base / base.mean(1, keepdims=True)  # each surface's hue, all of one brightness
    img = tint[surface] * 235 * np.clip(1.1 - depth[..., None] / 9, 0.1, 1.0)  # nearer is brighter: 1 m 232, 9 m 23
    stripes = np.sign(np.sin((xx if rng.random() < 0.5 else yy) * 0.6 / np.maximum(depth, 0.5)))
    img += 10 * stripes[..., None] + rng.normal(0, 3, img.shape)  # texture shrinks with depth
    return np.clip(img, 0, 255).astype(np.uint8), depth


def _depth_png(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Metres -> NYU's 16-bit millimetres, with its invalid (0) border and a few holes."""
    mm = np.clip(np.round(depth * 1000), 0, 65535).astype(np.uint16)
    mm[:8], mm[-8:], mm[:, :8], mm[:, -8:] = 0, 0, 0, 0
    for _ in range(2):
        y, x = rng.integers(40, depth.shape[0] - 40), rng.integers(40, depth.shape[1] - 40)
        cv2.circle(mm, (int(x), int(y)), int(rng.integers(4, 12)), 0, -1)
    return mm


def make_nyu_like(root: str | os.PathLike, num_train: int = 8, num_test: int = 3, seed: int = 0) -> Path:
    """``root/nyu/{images,annotations}/{train,test}``: rooms of :data:`SCENES`, names as mmseg's NYU converter
    writes them (train ``bedroom_0003_00042``, test ``bedroom_00042``); the first training image's scene is
    :data:`UNKNOWN_SCENE`."""
    base, rng = Path(root) / 'nyu', np.random.default_rng(seed)
    scenes = list(SCENES)
    for split, n in (('train', num_train), ('test', num_test)):
        for sub in ('images', 'annotations'):
            (base / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            scene = scenes[(i + (split == 'test')) % len(scenes)]
            far = rng.uniform(*SCENES[scene])
            if split == 'train' and i == 0:
                scene = UNKNOWN_SCENE
            stem = f'{scene}_{i + 1:04d}_{10 * i + 1:05d}' if split == 'train' else f'{scene}_{10 * i + 1:05d}'
            img, depth = _room(rng, *NYU_SIZE, far)
            cv2.imwrite(str(base / 'images' / split / f'{stem}.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(base / 'annotations' / split / f'{stem}.png'), _depth_png(depth, rng))
    return base


__all__ = ['make_nyu_like', 'SCENES', 'UNKNOWN_SCENE', 'NYU_SIZE']
