"""Semantic correspondence with diffusion features: SPair-71k's pairs, nearest neighbours, PCK (DIFT's protocol).

The protocol is DIFT's ``eval_spair.py`` (Tang et al. 2023, github.com/Tsingularity/dift), the one the diffusion-
feature papers report: each test pair of ``PairAnnotation/<split>/*.json``; both images resized to
``image_size`` for the model (DIFT: 768x768 for SD2.1); the feature map upsampled bilinearly to the image's own
size; each source keypoint's feature vector matched to the target pixel of highest cosine similarity; a match
is correct when it lies within ``alpha * max(h, w)`` of the target keypoint, ``(h, w)`` the target's bounding box
(PCK@0.1, bbox); reported per image (mean over pairs) and per point.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F


def read_pairs(root: str | Path, split: str = 'test', categories: Iterable[str] | None = None) -> list[dict]:
    """SPair-71k's pair annotations (``PairAnnotation/<split>/*.json``), sorted by file name."""
    folder = Path(root) / 'PairAnnotation' / split
    if not folder.is_dir():
        raise FileNotFoundError(f'no SPair-71k pairs at {str(folder)!r}: give the folder that holds PairAnnotation/, '
                                'JPEGImages/ (SPair-71k as distributed)')
    pairs = [json.loads(p.read_text()) for p in sorted(folder.glob('*.json'))]
    wanted = None if categories is None else set(categories)
    return [p for p in pairs if wanted is None or p['category'] in wanted]


def load_image(root: str | Path, category: str, name: str) -> torch.Tensor:
    """``JPEGImages/<category>/<name>`` as ``[3, H, W]`` float RGB in [0, 255]."""
    from PIL import Image
    with Image.open(Path(root) / 'JPEGImages' / category / name) as img:
        return torch.from_numpy(np.asarray(img.convert('RGB')).copy()).permute(2, 0, 1).float()


def model_input(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """``[1, 3, h, w]`` in [-1, 1] at ``size`` (rows, columns; ``None``: the image's own)."""
    x = image[None] / 127.5 - 1
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False, antialias=True)
    return x


def match_keypoints(src: torch.Tensor, trg: torch.Tensor, src_kps: torch.Tensor, src_hw: tuple[int, int],
                    trg_hw: tuple[int, int]) -> torch.Tensor:
    """Target ``(x, y)`` of each source keypoint ``(x, y)`` (image pixels): the cosine nearest neighbour of its
    feature among the target's, both ``[C, h, w]`` maps upsampled bilinearly to their image's size (DIFT)."""
    src = F.interpolate(src[None].float(), size=tuple(src_hw), mode='bilinear', align_corners=False)[0]
    trg = F.interpolate(trg[None].float(), size=tuple(trg_hw), mode='bilinear', align_corners=False)[0]
    x = src_kps[:, 0].long().clamp(0, src_hw[1] - 1)
    y = src_kps[:, 1].long().clamp(0, src_hw[0] - 1)
    query = F.normalize(src[:, y, x].T, dim=1)  # [N, C]
    keys = F.normalize(trg.flatten(1).T, dim=1)  # [h*w, C]
    best = (query @ keys.T).argmax(dim=1)
    return torch.stack([best % trg_hw[1], best // trg_hw[1]], dim=1)


def pck(pred: torch.Tensor, trg_kps: torch.Tensor, bbox: Iterable[float], alpha: float = 0.1) -> torch.Tensor:
    """Per keypoint: within ``alpha * max(box h, box w)`` of the truth (``bbox``: x0, y0, x1, y1)."""
    x0, y0, x1, y1 = bbox
    dist = (pred.float() - trg_kps.float()).norm(dim=1)
    return dist <= alpha * max(y1 - y0, x1 - x0)


def evaluate(featurize: Callable[[torch.Tensor, str], torch.Tensor], root: str | Path, pairs: list[dict],
             image_size: tuple[int, int] | None = (768, 768), alpha: float = 0.1) -> dict:
    """PCK of ``featurize(model input [1, 3, h, w], category) -> [C, h', w']`` over ``pairs`` (:func:`read_pairs`):
    ``per_image`` (mean over pairs), ``per_point``, ``per_category`` (per image), each in [0, 1]. Each image
    is featurized once."""
    cache: dict = {}

    def features(category, name):
        if (category, name) not in cache:
            image = load_image(root, category, name)
            cache[category, name] = (featurize(model_input(image, image_size), category), tuple(image.shape[-2:]))
        return cache[category, name]

    per_pair, points, per_category = [], [0, 0], defaultdict(list)
    for pair in pairs:
        cat = pair['category']
        (src, src_hw), (trg, trg_hw) = features(cat, pair['src_imname']), features(cat, pair['trg_imname'])
        src_kps, trg_kps = torch.tensor(pair['src_kps']), torch.tensor(pair['trg_kps'])
        ok = pck(match_keypoints(src, trg, src_kps, src_hw, trg_hw), trg_kps, pair['trg_bndbox'], alpha)
        per_pair.append(ok.float().mean().item())
        per_category[cat].append(per_pair[-1])
        points[0] += int(ok.sum())
        points[1] += len(ok)
    if not pairs:
        raise ValueError('no pairs to evaluate (check the split and the categories)')
    return dict(per_image=float(np.mean(per_pair)), per_point=points[0] / points[1], pairs=len(pairs),
                per_category={c: float(np.mean(v)) for c, v in sorted(per_category.items())})


def extractor_featurizer(extractor, tap: str, categories: list[str] | None = None, ensemble_average: bool = True):
    """``featurize`` for :func:`evaluate` from a :class:`~gate_features.GATEFeatures`: the map of ``tap``, averaged over
    the branches (an ensemble of noise draws: each branch has its own seeded noise in eval, DIFT averages 8 draws);
    with per-category prompts (``prompt_classes=categories``, a ``{}`` prompt) the image's category chooses one."""
    def featurize(x: torch.Tensor, category: str) -> torch.Tensor:
        device = extractor.mean.device
        class_ids = None
        if extractor.class_embed_select:
            class_ids = torch.tensor([categories.index(category)], device=device)
        feats = extractor(x.to(device), class_ids)
        maps = torch.stack([per_tap[tap][0] for per_tap in feats.values()])
        return (maps.mean(0) if ensemble_average else maps[0]).cpu()
    return featurize


__all__ = ['read_pairs', 'load_image', 'model_input', 'match_keypoints', 'pck', 'evaluate', 'extractor_featurizer']
