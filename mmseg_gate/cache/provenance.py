"""What a feature cache was made from, and the check that refuses a stale one."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

#: backbone options that do not change the features (or are trained on top of them): left out of the hash
NOT_FEATURE_KEYS = frozenset({'amalgamation', 'init_cfg', 'compile', 'feed_forward_chunks', 'release_cpu_memory',
                              'batch_branches', 'keep_text_encoder', 'hub_kwargs'})


class StaleCacheError(ValueError):
    """The cache was written for another backbone configuration (or input pipeline)."""


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_hash(value: Any, drop: frozenset = frozenset()) -> str:
    """sha256 (16 hex digits) of a config (dict/list) in canonical JSON, top-level ``drop`` keys left out."""
    value = _plain(value)
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in drop}
    text = json.dumps(value, sort_keys=True, default=str, separators=(',', ':'))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def backbone_hash(backbone_cfg: Mapping) -> str:
    """The hash of what makes a backbone's frozen features (its config minus trainable/speed-only keys)."""
    return config_hash(backbone_cfg, NOT_FEATURE_KEYS)


def check_fresh(meta: Mapping, backbone_cfg: Mapping | None = None, pipeline: Any = None, root: str = '') -> None:
    """Raise :class:`StaleCacheError` when ``meta`` (a cache's ``meta.json``) was made from another backbone
    config or image pipeline than the ones given (``None``: not checked)."""
    for what, given, key in (('backbone config', backbone_cfg, 'backbone_hash'),
                             ('image pipeline (cache_pipeline)', pipeline, 'pipeline_hash')):
        if given is None:
            continue
        now = backbone_hash(given) if key == 'backbone_hash' else config_hash(given)
        if now != meta.get(key):
            raise StaleCacheError(
                f'feature cache {root!r} is stale: it was written for another {what} (cache {meta.get(key)}, '
                f'this config {now}). Rebuild it: python tools/cache_features.py CONFIG --out {root or "CACHE"} '
                '--overwrite (or point cache_root to a cache made from this config)')
