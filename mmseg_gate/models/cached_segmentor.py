"""A segmentor that trains and tests on cached features (``mmseg_gate.cache``) instead of running the backbone.

Config: the live config, plus ``model.type='CachedFeatureEncoderDecoder'``, ``model.cache_root``, the
``CachedFeaturePreprocessor`` and a data pipeline that starts with ``LoadCachedFeatures`` and ends with
``PackCachedSegInputs``. ``model.backbone`` stays the live backbone's config: it is not built, only hashed and
checked against the cache (a cache of another config is refused), and its trainable part, the amalgamation,
is built on the cached per-branch features. State-dict keys equal the live model's (``backbone.amalgamation.*``,
``decode_head.*``): checkpoints move between the two.
"""
from __future__ import annotations

import os.path as osp
from typing import Sequence

import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor, BaseModule
from mmseg.models.segmentors import EncoderDecoder
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS

from ..cache.provenance import check_fresh
from ..cache.store import read_meta
from .amalgamation import Amalgamation


@MODELS.register_module()
class CachedFeaturePreprocessor(BaseDataPreprocessor):
    """Moves cached feature levels to the model's device as float32 and stacks them: ``[B, branches, C, h, w]``
    per level. Images of one batch must share their feature sizes (resize to one size in ``cache_pipeline``,
    or use batch size 1)."""

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        # the collate functions transpose the per-sample level lists: inputs[level] is the batch's list of
        # [branches, C, h, w] tensors (pseudo_collate) or already a [B, branches, C, h, w] tensor (default_collate)
        levels = []
        for i, level in enumerate(data['inputs']):
            if isinstance(level, torch.Tensor):
                levels.append(level.float())
                continue
            shapes = {tuple(s.shape) for s in level}
            if len(shapes) > 1:
                raise ValueError(f'cached level {i} has different sizes in one batch {sorted(shapes)}: resize the '
                                 'images to one size in cache_pipeline, or use batch_size=1')
            levels.append(torch.stack(list(level)).float())
        return dict(inputs=levels, data_samples=data.get('data_samples'))


class CachedFeatures(BaseModule):
    """Stands in for the backbone: cached ``extract()`` levels -> amalgamation (or the branches concatenated).

    Has the backbone's ``out_channels`` and ``frozen_provenance()`` (the cache's ``gate_frozen``), so
    ``GATECheckHook`` checks the heads and records the provenance in checkpoints as for the live model.
    """

    def __init__(self, meta: dict, amalgamation: dict | None) -> None:
        super().__init__()
        self.meta = meta
        channels = [lv['channels'] for lv in meta['levels']]
        self.num_branches = len(meta['branches'])
        self.strides = [lv['stride'] for lv in meta['levels']]
        if amalgamation is None:
            self.amalgamation = None
            self.out_channels = [c * self.num_branches for c in channels]  # branches side by side
        else:
            self.amalgamation = Amalgamation(channels, self.num_branches, **amalgamation)
            self.out_channels = self.amalgamation.out_channels

    def frozen_provenance(self) -> dict:
        return dict(self.meta.get('gate_frozen') or {})

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # [level][branch] as extract() gives them: contiguous [B, C, h, w] (a strided view is slow on CPU)
        feats = [[b.contiguous() for b in lv.unbind(1)] for lv in levels]
        if self.amalgamation is None:
            return [torch.cat(f, 1) if len(f) > 1 else f[0] for f in feats]
        return self.amalgamation(feats)


@MODELS.register_module()
class CachedFeatureEncoderDecoder(EncoderDecoder):
    """EncoderDecoder on cached features: the backbone is replaced by :class:`CachedFeatures`.

    Args:
        cache_root: the cache folder (``tools/cache_features.py``).
        backbone: the live backbone config: checked against the cache, its ``amalgamation`` built here
            (``None``, or a one-branch cache: the raw features; several branches without amalgamation are
            concatenated per level).
        cache_pipeline: optional: the image pipeline the cache must have been made with.
        **kwargs: :class:`EncoderDecoder`'s (decode_head, neck, auxiliary_head, train_cfg, test_cfg,
            data_preprocessor, init_cfg; ``pretrained`` is accepted and unused). Inference is ``'whole'``.
    """

    def __init__(self, cache_root: str, backbone: dict, decode_head: dict, neck: dict | None = None,
                 auxiliary_head: dict | None = None, train_cfg: dict | None = None, test_cfg: dict | None = None,
                 data_preprocessor: dict | None = None, cache_pipeline: list | None = None,
                 pretrained: str | None = None, init_cfg: dict | None = None) -> None:
        BaseSegmentor.__init__(self, data_preprocessor=data_preprocessor or dict(type='CachedFeaturePreprocessor'),
                               init_cfg=init_cfg)
        meta_file = osp.join(cache_root, 'meta.json')
        if not osp.isfile(meta_file):
            raise FileNotFoundError(f'no feature cache in {cache_root!r}: make it with '
                                    f'python tools/cache_features.py LIVE_CONFIG --out {cache_root}')
        meta = read_meta(cache_root)  # a damaged meta.json: named, with the command that rebuilds it
        check_fresh(meta, backbone, cache_pipeline, cache_root)
        self.cache_root = cache_root
        # as the live backbone: amalgamation=dict() by default; None: raw features (branches concatenated)
        self.backbone = CachedFeatures(meta, backbone.get('amalgamation', dict()))
        if neck is not None:
            self.neck = MODELS.build(neck)
        self._init_decode_head(decode_head)
        self._init_auxiliary_head(auxiliary_head)
        self.train_cfg, self.test_cfg = train_cfg, test_cfg
        if (test_cfg or {}).get('mode', 'whole') != 'whole':
            raise ValueError("cached features are whole images: test_cfg mode must be 'whole'")

    def predict(self, inputs, data_samples=None):
        if data_samples is None:
            raise ValueError('cached-feature prediction needs the data samples (their ori_shape)')
        return super().predict(inputs, data_samples)
