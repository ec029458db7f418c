"""Synthetic, learnable segmentation data in the real ADE20K and Cityscapes folder layouts.

mmseg's own ``ADE20KDataset`` and ``CityscapesDataset`` read these folders unchanged. Each class has
its own colour range, texture and shape, so a working pipeline visibly learns (and a broken one
does not): the demo's mIoU is far above chance only when training works.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

#: (ADE20K class id 1..150, name, base BGR colour, texture)
ADE_CLASSES = [(1, 'wall', (170, 170, 170), 'noise'), (3, 'sky', (235, 180, 120), 'flat'),
               (5, 'tree', (40, 140, 40), 'dots'), (7, 'road', (90, 90, 90), 'hstripes'),
               (13, 'person', (60, 60, 200), 'flat'), (21, 'car', (200, 60, 60), 'vstripes')]
#: (Cityscapes trainId, labelId, name, base BGR colour, texture)
CITYSCAPES_CLASSES = [(0, 7, 'road', (128, 64, 128), 'noise'), (2, 11, 'building', (70, 70, 70), 'hstripes'),
                      (8, 21, 'vegetation', (35, 142, 107), 'dots'), (10, 23, 'sky', (180, 130, 70), 'flat'),
                      (11, 24, 'person', (60, 20, 220), 'flat'), (13, 26, 'car', (142, 0, 0), 'vstripes')]


def _texture(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    if kind == 'hstripes':
        return 25 * np.sign(np.sin(yy / 2.0))
    if kind == 'vstripes':
        return 25 * np.sign(np.sin(xx / 2.0))
    if kind == 'dots':
        return 30 * ((yy % 6 < 3) & (xx % 6 < 3)) - 15
    if kind == 'noise':
        return rng.normal(0, 12, (h, w))
    return np.zeros((h, w))


def _scene(rng: np.random.Generator, h: int, w: int, classes: list) -> tuple[np.ndarray, np.ndarray]:
    """A picture of: background (class 0, 1 of the table) split by a horizon, then 2-4 objects."""
    label = np.zeros((h, w), np.int32)
    horizon = int(h * rng.uniform(0.3, 0.6))
    label[:horizon] = 1                      # sky-like top
    label[horizon:] = 0                      # ground-like bottom
    label[int(h * 0.85):] = 3                # road-like band at the bottom
    for _ in range(rng.integers(1, 4)):
        k = int(rng.choice([2, 4, 5]))
        cy, cx = int(rng.integers(h // 4, h)), int(rng.integers(0, w))
        r = int(rng.integers(h // 5, h // 3))
        mask = np.zeros((h, w), np.uint8)
        if k == 2:
            cv2.circle(mask, (cx, cy), r, 1, -1)
        elif k == 4:
            cv2.ellipse(mask, (cx, cy), (r // 2, r), 0, 0, 360, 1, -1)
        else:
            cv2.rectangle(mask, (cx - r, cy - r // 2), (cx + r, cy + r // 2), 1, -1)
        label[mask > 0] = k
    img = np.zeros((h, w, 3), np.float64)
    for k, cls in enumerate(classes):
        colour, texture = np.array(cls[-2], np.float64), cls[-1]
        m = label == k
        if m.any():
            tint = colour + rng.normal(0, 10, 3)
            img[m] = tint + _texture(texture, h, w, rng)[m, None]
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_ade20k_like(root: str | os.PathLike, num_train: int = 40, num_val: int = 10, size: tuple = (96, 128),
                     seed: int = 0) -> Path:
    """``root/ADEChallengeData2016/{images,annotations}/{training,validation}/ADE_*`` (+ images/testing)."""
    base = Path(root) / 'ADEChallengeData2016'
    rng = np.random.default_rng(seed)
    lut = np.array([c[0] for c in ADE_CLASSES], np.uint8)
    tags = {}  # tag-style captions (as a WD14 tagger's) of the training images, from their labels
    for split, prefix, n in (('training', 'ADE_train', num_train), ('validation', 'ADE_val', num_val),
                             ('testing', 'ADE_test', num_val)):
        (base / 'images' / split).mkdir(parents=True, exist_ok=True)
        if split != 'testing':
            (base / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = _scene(rng, *size, ADE_CLASSES)
            name = f'{prefix}_{i + 1:08d}'
            cv2.imwrite(str(base / 'images' / split / f'{name}.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            if split != 'testing':
                cv2.imwrite(str(base / 'annotations' / split / f'{name}.png'), lut[label])  # 0 stays 'other'
            if split == 'training':
                tags[f'images/training/{name}.jpg'] = ', '.join(ADE_CLASSES[k][1] for k in np.unique(label))
    (base / 'captions_tags.json').write_text(json.dumps(tags, indent=1))
    return base


def make_cityscapes_like(root: str | os.PathLike, num_train: int = 12, num_val: int = 6, size: tuple = (128, 256),
                         seed: int = 1) -> Path:
    """``root/cityscapes/leftImg8bit/{train,val,test}/<city>/*_leftImg8bit.png`` + ``gtFine`` labelTrainIds/labelIds/instanceIds."""
    base = Path(root) / 'cityscapes'
    rng = np.random.default_rng(seed)
    train_ids = np.array([c[0] for c in CITYSCAPES_CLASSES], np.uint8)
    label_ids = np.array([c[1] for c in CITYSCAPES_CLASSES], np.uint8)
    for split, city, n in (('train', 'aachen', num_train), ('val', 'frankfurt', num_val), ('test', 'berlin', 2)):
        (base / 'leftImg8bit' / split / city).mkdir(parents=True, exist_ok=True)
        (base / 'gtFine' / split / city).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = _scene(rng, *size, CITYSCAPES_CLASSES)
            stem = f'{city}_{i:06d}_000019'
            cv2.imwrite(str(base / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png'), img)
            if split == 'test':
                continue
            tid, lid = train_ids[label], label_ids[label]
            edge = cv2.morphologyEx((label * 40).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
            tid[edge], lid[edge] = 255, 0  # thin 'unlabeled' seams, as in real annotations
            cv2.imwrite(str(base / 'gtFine' / split / city / f'{stem}_gtFine_labelTrainIds.png'), tid)
            cv2.imwrite(str(base / 'gtFine' / split / city / f'{stem}_gtFine_labelIds.png'), lid)
            # every region as one instance (what cityscapesscripts' instance-weighted scores need)
            cv2.imwrite(str(base / 'gtFine' / split / city / f'{stem}_gtFine_instanceIds.png'), lid)
    return base


def make_ddpm_segmentation_like(root: str | os.PathLike, category: str = 'horse_21', num_train: int = 6,
                                num_test: int = 6, size: int = 64, seed: int = 2) -> Path:
    """``root/<category>/real/{train,test}/<stem>.png`` + ``<stem>.npy`` (DDPM-segmentation's published layout).

    Square pictures of the scenes above; labels are the scene classes 0..5 as class indices (valid for every
    set), with a few pixels of 255 (unlabelled) as in the real label maps.
    """
    base = Path(root) / category / 'real'
    rng = np.random.default_rng(seed)
    for split, n in (('train', num_train), ('test', num_test)):
        (base / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = _scene(rng, size, size, ADE_CLASSES)
            label = label.astype(np.uint8)
            label[:2, :2] = 255
            stem = f'img_{split}_{i:03d}'
            cv2.imwrite(str(base / split / f'{stem}.png'), img)
            np.save(base / split / f'{stem}.npy', label)
    return base
