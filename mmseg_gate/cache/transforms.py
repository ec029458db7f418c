"""Data-pipeline pieces that feed cached features instead of images."""
from __future__ import annotations

from mmseg.datasets.transforms import PackSegInputs
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from .store import FeatureCache


@TRANSFORMS.register_module()
class LoadCachedFeatures(BaseTransform):
    """Reads the cached features of ``results['img_path']`` into ``results['cached_features']`` (one
    ``[branches, C, h, w]`` tensor per level) and sets ``ori_shape``/``img_shape`` as the live pipeline had them.

    Args:
        cache_root: the folder ``tools/cache_features.py`` wrote.
    """

    def __init__(self, cache_root: str) -> None:
        self.cache_root = cache_root
        self._cache = None  # opened lazily: in each dataloader worker, index only

    @property
    def cache(self) -> FeatureCache:
        if self._cache is None:
            self._cache = FeatureCache(self.cache_root)
        return self._cache

    def transform(self, results: dict) -> dict:
        levels, info = self.cache.read(results['img_path'])
        results['cached_features'] = levels
        results['ori_shape'] = tuple(info['ori_shape'])
        results['img_shape'] = tuple(info['img_shape'])
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(cache_root={self.cache_root!r})'


@TRANSFORMS.register_module()
class PackCachedSegInputs(PackSegInputs):
    """``PackSegInputs`` whose ``inputs`` are the cached feature levels (no image)."""

    def transform(self, results: dict) -> dict:
        packed = super().transform(results)
        packed['inputs'] = results['cached_features']
        return packed
