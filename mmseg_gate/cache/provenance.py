"""What a feature cache was made from, and the checks that refuse a stale one.

Two kinds of provenance: the *settings* (the backbone config and the image pipeline, hashed; the stored copies
let a refusal name the settings that differ) and the *files* (LoRAs, IP-Adapters, ControlNets, the model
folders): their size, modification time and sha256, so a file replaced at the same path is noticed.
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import re
from typing import Any, Mapping

from ..utils.files import file_sha256

#: backbone options that do not change the features (or are trained on top of them): left out of the hash
NOT_FEATURE_KEYS = frozenset({'amalgamation', 'init_cfg', 'compile', 'feed_forward_chunks', 'release_cpu_memory',
                              'batch_branches', 'keep_text_encoder', 'hub_kwargs',
                              # the speed levers: float order only (equal within 1e-4, tests/test_speed_levers.py)
                              'compile_denoiser', 'channels_last', 'sdpa_backends'})
#: model-folder files up to this size are hashed when the cache is made; larger ones are only hashed when the hub
#: cache names their sha256 for free (its blobs), else recorded by size and modification time (SD1.5's UNet is
#: 3.4 GB: hashing every model folder on every run would cost more than a small cache's extraction)
CHEAP_HASH_BYTES = 512 * 2**20
#: pipeline components that do not make features
UNUSED_COMPONENTS = frozenset({'safety_checker', 'feature_extractor'})
_SHA256 = re.compile(r'[0-9a-f]{64}')


class StaleCacheError(ValueError):
    """The cache was written for another backbone configuration, input pipeline or other model files."""


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _as_stored(value: Any) -> Any:
    """``value`` as ``meta.json`` holds it (JSON round trip: tuples become lists, other objects strings)."""
    return json.loads(json.dumps(_plain(value), default=str))


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


# ----------------------------------------------------------------------------------- settings that differ
def _short(value: Any, limit: int = 80) -> str:
    text = 'absent' if value is _MISSING else json.dumps(value, default=str, separators=(', ', ': '))
    return text if len(text) <= limit else text[:limit - 3] + '...'


_MISSING = object()


def config_differences(cached: Any, given: Any, prefix: str) -> list[str]:
    """``'prefix.key: cache X, this config Y'`` for every leaf where two configs differ."""
    if isinstance(cached, dict) and isinstance(given, dict):
        out = []
        for k in sorted(set(cached) | set(given)):
            out += config_differences(cached.get(k, _MISSING), given.get(k, _MISSING), f'{prefix}.{k}')
        return out
    if isinstance(cached, list) and isinstance(given, list) and len(cached) == len(given) and any(
            isinstance(v, (dict, list)) for v in cached + given):  # lists of values (a scale) are one setting
        return [d for i, (a, b) in enumerate(zip(cached, given)) for d in config_differences(a, b, f'{prefix}[{i}]')]
    return [] if cached == given else [f'{prefix}: cache {_short(cached)}, this config {_short(given)}']


def backbone_differences(cached_cfg: Mapping, given_cfg: Mapping) -> list[str]:
    """The feature-making backbone settings that differ (``NOT_FEATURE_KEYS`` left out)."""
    strip = lambda c: {k: v for k, v in _as_stored(c).items() if k not in NOT_FEATURE_KEYS}  # noqa: E731
    return config_differences(strip(cached_cfg), strip(given_cfg), 'backbone')


def check_fresh(meta: Mapping, backbone_cfg: Mapping | None = None, pipeline: Any = None, root: str = '',
                sources: bool = True) -> None:
    """Raise :class:`StaleCacheError` when ``meta`` (a cache's ``meta.json``) was made from another backbone
    config or image pipeline than the ones given (``None``: not checked), or (``sources``) when a file it was
    built from changed since (:func:`check_sources`). The message names what differs and the fix."""
    for what, given, key in (('backbone config', backbone_cfg, 'backbone_hash'),
                             ('image pipeline (cache_pipeline)', pipeline, 'pipeline_hash')):
        if given is None:
            continue
        now = backbone_hash(given) if key == 'backbone_hash' else config_hash(given)
        if now != meta.get(key):
            if key == 'backbone_hash':
                diffs = backbone_differences(meta['backbone'], given) if 'backbone' in meta else []
            else:
                diffs = config_differences(meta['pipeline'], _as_stored(given), 'pipeline') if 'pipeline' in meta \
                    else []
            raise StaleCacheError(
                f'feature cache {root!r} is stale: it was written for another {what} '
                f'({"; ".join(diffs) or "differences not recorded"}; hash: cache {meta.get(key)}, this config {now}). '
                f'Rebuild it: python tools/cache_features.py CONFIG --out {root or "CACHE"} --overwrite '
                '(or point cache_root to a cache made from this config)')
    if sources:
        check_sources(meta, root)


# ------------------------------------------------------------------------------------------ source files
def _local(name: str) -> str | None:
    """A local path for a model path or hub id (the hub cache's snapshot; ``None`` when neither)."""
    path = osp.abspath(osp.expanduser(str(name)))
    if osp.exists(path):
        return path
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(str(name), local_files_only=True)
    except Exception:  # not a hub id, or not in the hub cache: nothing local to fingerprint
        return None


def _files_below(folder: str) -> list[str]:
    out = []
    for base, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        out += [osp.join(base, f) for f in sorted(files) if not f.startswith('.')]
    return out


def model_files(name: str | None) -> list[str]:
    """The files a model path (a file, a model folder, a pipeline folder or a hub id) loads from: for a
    pipeline folder (``model_index.json``) the components' folders, without the safety checker."""
    path = _local(name) if name else None
    if path is None:
        return []
    if osp.isfile(path):
        return [path]
    index = osp.join(path, 'model_index.json')
    if not osp.isfile(index):
        return _files_below(path)
    with open(index) as f:
        components = [k for k in json.load(f) if not k.startswith('_') and k not in UNUSED_COMPONENTS]
    return [index] + [p for c in components if osp.isdir(osp.join(path, c)) for p in _files_below(osp.join(path, c))]


def source_files(provenance: Mapping) -> dict[str, bool]:
    """Every file a backbone's ``frozen_provenance()`` says its features come from -> whether it is always
    hashed (LoRAs, IP-Adapters, ControlNets) or only when cheap (the pipeline and override folders)."""
    out: dict[str, bool] = {}
    for name in (provenance.get('pretrained'), provenance.get('unet'), provenance.get('vae')):
        out.update(dict.fromkeys(model_files(name), False))
    for name in provenance.get('controlnets') or ():
        out.update(dict.fromkeys(model_files(name), True))
    for name in [*(provenance.get('loras') or {}), *(provenance.get('ip_adapters') or {})]:
        out.update(dict.fromkeys(model_files(name) or [osp.abspath(osp.expanduser(name))], True))
    return out


def _hub_blob_sha256(path: str) -> str | None:
    """The sha256 the hub cache names a large file's blob by (free: no read)."""
    real = osp.realpath(path)
    name = osp.basename(real)
    return name if _SHA256.fullmatch(name) and osp.basename(osp.dirname(real)) == 'blobs' else None


def fingerprint(path: str, always_hash: bool = True, previous: Mapping | None = None,
                known_sha256: str | None = None) -> dict:
    """``{size, mtime_ns, sha256}`` of a file (``{missing: True}`` when gone). The sha256 is taken from
    ``known_sha256``, or from ``previous`` when size and mtime are unchanged; it is computed when the file is
    always hashed, cheap, or ``previous`` had one (size/mtime changed: the content is compared)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return dict(missing=True)
    rec: dict[str, Any] = dict(size=st.st_size, mtime_ns=st.st_mtime_ns)
    old_sha = (previous or {}).get('sha256')
    unchanged = bool(previous) and previous.get('size') == st.st_size and previous.get('mtime_ns') == st.st_mtime_ns
    if known_sha256:
        rec['sha256'] = known_sha256
    elif old_sha and unchanged:
        rec['sha256'] = old_sha
    elif (sha := _hub_blob_sha256(path)) is not None:
        rec['sha256'] = sha
    elif old_sha or (not previous and (always_hash or st.st_size <= CHEAP_HASH_BYTES)):
        rec['sha256'] = file_sha256(path)
    return rec


def fingerprint_sources(files: Mapping[str, bool], previous: Mapping[str, Mapping] | None = None,
                        known_sha256: Mapping[str, str] | None = None) -> dict[str, dict]:
    """:func:`fingerprint` of every file of :func:`source_files` (``previous``: the cache's records)."""
    previous = previous or {}
    known = {osp.abspath(osp.expanduser(k)): v for k, v in (known_sha256 or {}).items()}
    return {p: fingerprint(p, always, previous.get(p), known.get(p)) for p, always in files.items()}


def source_changes(cached: Mapping[str, Mapping], now: Mapping[str, Mapping]) -> list[str]:
    """One line per recorded file that changed or went missing since. Files added to a model folder since are
    not changes: diffusers loads the files it loaded before (an fp16 variant downloaded beside them is unused)."""
    out = []
    for path in sorted(cached):
        old, new = cached[path], now.get(path)
        if new is None or new.get('missing'):
            out.append(f'{path}: missing (the cache was built from it)')
        elif old.get('missing'):
            out.append(f'{path}: exists now, missing when the cache was built')
        elif old.get('sha256') and new.get('sha256'):
            if old['sha256'] != new['sha256']:
                out.append(f"{path}: changed (sha256 cache {old['sha256'][:12]}..., now {new['sha256'][:12]}...)")
        elif (old.get('size'), old.get('mtime_ns')) != (new.get('size'), new.get('mtime_ns')):
            out.append(f"{path}: changed (size {old.get('size')} -> {new.get('size')} bytes or modification time; "
                       f'sha256 not recorded for files over {CHEAP_HASH_BYTES // 2**20} MiB)')
    return out


def check_sources(meta: Mapping, root: str = '') -> None:
    """Raise :class:`StaleCacheError` naming the files the cache was built from that changed since (a LoRA
    replaced at the same path, ...). Caches without records (``meta['sources']``) are not checked."""
    cached = meta.get('sources')
    if cached is None:
        return
    now = fingerprint_sources(source_files(meta.get('gate_frozen') or {}), previous=cached)
    changes = source_changes(cached, now)
    if changes:
        raise StaleCacheError(stale_files_message(root, changes))


def stale_files_message(root: str, changes: list[str]) -> str:
    return (f'feature cache {root!r} is stale: files it was built from changed since: ' + '; '.join(changes)
            + f'. Rebuild it: python tools/cache_features.py CONFIG --out {root or "CACHE"} --overwrite')
