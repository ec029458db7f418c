"""A synthetic twin of SPair-71k's layout, for the correspondence tool's tests (no real photographs).

``root/JPEGImages/<category>/<name>.jpg`` and ``root/PairAnnotation/<split>/<id>-<src>-<trg>:<category>.json``
with SPair's fields (``src_imname``, ``trg_imname``, ``category``, ``src_kps``/``trg_kps`` as ``[x, y]`` pixel
lists, ``src_bndbox``/``trg_bndbox`` as ``[x0, y0, x1, y1]``, ``src_imsize``/``trg_imsize`` as ``[w, h, 3]``).

Each picture is smooth coloured noise with a few discs (every pixel's neighbourhood differs, so exact features
match one place only). ``warp='none'`` pairs an image with itself (a correct matcher scores PCK 1.0);
``'flip'``, ``'rotate'`` or ``'shift'`` pair it with its transformed copy, keypoints transformed with it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

WARPS = ('none', 'flip', 'rotate', 'shift')


def _picture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    noise = rng.uniform(0, 255, (max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
    img = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(3):
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(h // 10, h // 4)),
                   [float(c) for c in rng.uniform(0, 255, 3)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _warp(img: np.ndarray, kps: np.ndarray, warp: str) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    if warp == 'none':
        return img.copy(), kps.copy()
    if warp == 'flip':
        return img[:, ::-1].copy(), np.stack([w - 1 - kps[:, 0], kps[:, 1]], 1)
    if warp == 'rotate':  # 90 degrees counter-clockwise: (x, y) -> (y, w - 1 - x), the image becomes w x h
        return np.rot90(img).copy(), np.stack([kps[:, 1], w - 1 - kps[:, 0]], 1)
    if warp == 'shift':
        dx = w // 3
        return np.roll(img, dx, axis=1), np.stack([(kps[:, 0] + dx) % w, kps[:, 1]], 1)
    raise ValueError(f'warp={warp!r}: use one of {WARPS}')


def make_spair_like(root: str | os.PathLike, categories: tuple[str, ...] = ('cat', 'dog'), pairs_per_category: int = 2,
                    size: tuple[int, int] = (64, 96), num_kps: int = 6, warp: str = 'none', split: str = 'test',
                    seed: int = 0) -> Path:
    """Write the twin under ``root`` and return it; ``size``: (rows, columns) of the source pictures."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    (root / 'PairAnnotation' / split).mkdir(parents=True, exist_ok=True)
    pair_id = 0
    for category in categories:
        (root / 'JPEGImages' / category).mkdir(parents=True, exist_ok=True)
        for i in range(pairs_per_category):
            src_name, trg_name = f'{2 * i:06d}.jpg', f'{2 * i + 1:06d}.jpg'
            src = _picture(rng, h, w)
            margin = max(2, min(h, w) // 8)
            kps = np.stack([rng.integers(margin, w - margin, num_kps), rng.integers(margin, h - margin, num_kps)], 1)
            trg, trg_kps = _warp(src, kps, warp)
            for name, img in ((src_name, src), (trg_name, trg)):  # PNG-quality JPEG: identical pixels stay identical
                cv2.imwrite(str(root / 'JPEGImages' / category / name), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
            th, tw = trg.shape[:2]
            ann = dict(pair_id=pair_id, category=category, src_imname=src_name, trg_imname=trg_name,
                       src_imsize=[w, h, 3], trg_imsize=[tw, th, 3], src_kps=kps.tolist(), trg_kps=trg_kps.tolist(),
                       src_bndbox=[0, 0, w - 1, h - 1], trg_bndbox=[0, 0, tw - 1, th - 1], kps_ids=list(range(num_kps)))
            stem = f'{pair_id:06d}-{Path(src_name).stem}-{Path(trg_name).stem}:{category}.json'
            (root / 'PairAnnotation' / split / stem).write_text(json.dumps(ann))
            pair_id += 1
    return root


__all__ = ['make_spair_like', 'WARPS']
