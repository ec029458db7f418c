"""Per-image feature files (safetensors, read memory-mapped) with one ``meta.json`` of provenance.

Layout of a cache folder::

    meta.json                   backbone config + its hash, image pipeline + hash, meta.gate_frozen (the
                                backbone's frozen_provenance()), levels (channels, stride), branches, dtype
    index.json                  absolute image path -> file, ori_shape, img_shape
    features/<key>.safetensors  'level<i>': [branches, C_i, h_i, w_i] per level (the backbone's extract()),
                                file metadata: image path and backbone hash

Only the images a batch needs are ever read (one file each); nothing holds the whole set in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
from typing import Any, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .provenance import StaleCacheError, check_fresh

CACHE_VERSION = 1


def image_key(img_path: str) -> str:
    """The index key of an image: its absolute, normalised path."""
    return osp.normpath(osp.abspath(img_path))


class FeatureCacheWriter:
    """Writes one safetensors file per image; resumable (images already in the index are skipped).

    Args:
        root: the cache folder.
        meta: what :func:`mmseg_gate.cache.write_feature_cache` records (hashes, provenance, levels).
        dtype: ``torch.float16`` (half the size; SD features fit its range) or ``torch.float32`` (exact).
        overwrite: replace a cache made from another config instead of refusing it.
    """

    def __init__(self, root: str, meta: dict, dtype: torch.dtype = torch.float16, overwrite: bool = False) -> None:
        self.root, self.meta, self.dtype = root, dict(meta, version=CACHE_VERSION, dtype=str(dtype)), dtype
        os.makedirs(osp.join(root, 'features'), exist_ok=True)
        self.index: dict[str, dict] = {}
        meta_file = osp.join(root, 'meta.json')
        if osp.isfile(meta_file):
            with open(meta_file) as f:
                old = json.load(f)
            same = all(old.get(k) == self.meta.get(k) for k in ('backbone_hash', 'pipeline_hash', 'dtype'))
            if not same and not overwrite:
                raise StaleCacheError(f'{root} holds a cache of another config (backbone {old.get("backbone_hash")},'
                                      f' pipeline {old.get("pipeline_hash")}, {old.get("dtype")}): pass --overwrite '
                                      'or choose another --out')
            if same and osp.isfile(osp.join(root, 'index.json')):
                with open(osp.join(root, 'index.json')) as f:
                    self.index = json.load(f)
        with open(meta_file, 'w') as f:
            json.dump(self.meta, f, indent=1, default=str)

    def __contains__(self, img_path: str) -> bool:
        return image_key(img_path) in self.index

    def add(self, img_path: str, levels: Sequence[Sequence[torch.Tensor]], info: Mapping[str, Any]) -> str:
        """Store one image's ``extract()`` output (``levels[i][branch]``, each ``[1, C, h, w]``)."""
        key = image_key(img_path)
        name = hashlib.sha1(key.encode()).hexdigest()[:20] + '.safetensors'
        tensors = {f'level{i}': torch.cat([b.detach() for b in lvl], 0).to('cpu', self.dtype).contiguous()
                   for i, lvl in enumerate(levels)}
        save_file(tensors, osp.join(self.root, 'features', name),
                  metadata=dict(img_path=key, backbone_hash=str(self.meta['backbone_hash'])))
        self.index[key] = dict(file=name, **{k: list(v) if isinstance(v, tuple) else v for k, v in info.items()})
        return name

    def flush(self) -> None:
        tmp = osp.join(self.root, 'index.json.tmp')
        with open(tmp, 'w') as f:
            json.dump(self.index, f)
        os.replace(tmp, osp.join(self.root, 'index.json'))


class FeatureCache:
    """Reads a cache folder. ``read(img_path)`` -> (``[level]`` tensors ``[branches, C, h, w]``, info).

    Args:
        root: the cache folder.
        backbone: the backbone config the features must come from (refused with a message otherwise);
            ``None`` skips the check.
        pipeline: the image pipeline they must come from; ``None`` skips the check.
    """

    def __init__(self, root: str, backbone: Mapping | None = None, pipeline: Any = None) -> None:
        meta_file = osp.join(root, 'meta.json')
        if not osp.isfile(meta_file) or not osp.isfile(osp.join(root, 'index.json')):
            raise FileNotFoundError(f'no feature cache in {root!r}: make it with '
                                    f'python tools/cache_features.py CONFIG --out {root}')
        with open(meta_file) as f:
            self.meta = json.load(f)
        with open(osp.join(root, 'index.json')) as f:
            self.index = json.load(f)
        self.root = root
        check_fresh(self.meta, backbone, pipeline, root)

    def __len__(self) -> int:
        return len(self.index)

    def info(self, img_path: str) -> dict:
        key = image_key(img_path)
        if key not in self.index:
            raise KeyError(f'{key} is not in the feature cache {self.root!r} ({len(self.index)} images): '
                           'cache every split you train or test on (tools/cache_features.py --splits)')
        return self.index[key]

    def read(self, img_path: str) -> tuple[list[torch.Tensor], dict]:
        info = self.info(img_path)
        with safe_open(osp.join(self.root, 'features', info['file']), framework='pt') as f:
            if f.metadata().get('backbone_hash') != self.meta['backbone_hash']:
                raise StaleCacheError(f"{info['file']} in {self.root!r} was written for another backbone "
                                      'config than meta.json says: rebuild the cache with --overwrite')
            levels = [f.get_tensor(f'level{i}') for i in range(len(self.meta['levels']))]
        return levels, info
