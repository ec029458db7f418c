"""Per-image feature files (safetensors, read memory-mapped) with one ``meta.json`` of provenance.

Layout of a cache folder::

    meta.json                   backbone config + its hash, image pipeline + hash, meta.gate_frozen (the
                                backbone's frozen_provenance()), sources (size, mtime, sha256 of every file the
                                features come from), levels (channels, stride), branches, dtype
    index.json                  absolute image path -> file, ori_shape, img_shape (compacted from the journal)
    index.journal               the same, one JSON line per image added since (appended as each image is done:
                                a killed run resumes after its last image)
    features/<key>.safetensors  'level<i>': [branches, C_i, h_i, w_i] per level (the backbone's extract()),
                                file metadata: image path and backbone hash

Every file is written to a temporary file and renamed (``utils/atomic.py``): a kill leaves the old file or the
new one, never half of one. Only the images a batch needs are ever read (one file each); nothing holds the whole
set in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
from typing import Any, Mapping, Sequence

import torch
from mmengine.logging import print_log
from safetensors import safe_open
from safetensors.torch import save_file

from ..utils.atomic import atomic_save, atomic_write_json
from .provenance import (StaleCacheError, _as_stored, backbone_differences, check_fresh, config_differences,
                         fingerprint_sources, source_changes, source_files)

try:
    from safetensors import SafetensorError
except ImportError:  # older safetensors
    from safetensors.safetensors_rust import SafetensorError

CACHE_VERSION = 2
#: the journal is compacted into index.json after this many images (or a quarter of the index, if more)
COMPACT_EVERY = 50
META, INDEX, JOURNAL = 'meta.json', 'index.json', 'index.journal'


class DamagedCacheError(RuntimeError):
    """A cache file (meta.json, index.json, a feature file) cannot be read: cut short or corrupt."""


def image_key(img_path: str) -> str:
    """The index key of an image: its absolute, normalised path."""
    return osp.normpath(osp.abspath(img_path))


def read_json(path: str, fix: str) -> Any:
    """A cache's JSON file, or :class:`DamagedCacheError` naming it and ``fix``."""
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise DamagedCacheError(f'{path} cannot be read ({type(e).__name__}: {e}): {fix}') from e


def _rebuild_hint(root: str) -> str:
    return (f'rebuild the cache: python tools/cache_features.py CONFIG --out {root} --overwrite '
            '(re-extracts every image)')


def read_meta(root: str) -> dict:
    """``root/meta.json`` (:class:`DamagedCacheError` with the fix when it cannot be read)."""
    return read_json(osp.join(root, META), _rebuild_hint(root))


def read_index(root: str) -> dict[str, dict]:
    """``index.json`` plus the journal's lines; a line cut short by a kill is left out (its image is
    extracted again)."""
    index_file = osp.join(root, INDEX)
    index = read_json(index_file, _rebuild_hint(root)) if osp.isfile(index_file) else {}
    journal = osp.join(root, JOURNAL)
    if osp.isfile(journal):
        with open(journal, 'rb') as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    index[entry.pop('key')] = entry
                except (ValueError, KeyError, AttributeError, UnicodeDecodeError):
                    continue
    return index


def has_cache(root: str) -> bool:
    return osp.isfile(osp.join(root, META)) and (osp.isfile(osp.join(root, INDEX))
                                                 or osp.isfile(osp.join(root, JOURNAL)))


def entry_problem(root: str, key: str, entry: Mapping, meta: Mapping) -> str | None:
    """Why an indexed entry cannot be read (``None``: it can), from its safetensors header only."""
    path = osp.join(root, 'features', str(entry.get('file')))
    try:
        with safe_open(path, framework='pt') as f:
            names, metadata = set(f.keys()), f.metadata() or {}
    except (SafetensorError, OSError) as e:
        return f'{type(e).__name__}: {e}'
    missing = [f'level{i}' for i in range(len(meta.get('levels', ()))) if f'level{i}' not in names]
    if missing:
        return f'no tensors {missing}'
    if metadata.get('img_path') != key or metadata.get('backbone_hash') != str(meta.get('backbone_hash')):
        return f"written for another image or backbone ({metadata.get('img_path')}, {metadata.get('backbone_hash')})"
    return None


def _provenance_sha_changes(old: Mapping, new: Mapping) -> list[str]:
    """Files whose sha256 differ between two ``frozen_provenance()`` records (caches without ``sources``)."""
    out = []
    for kind in ('loras', 'ip_adapters'):
        a, b = old.get(kind) or {}, new.get(kind) or {}
        out += [f'{p}: changed (sha256 cache {a[p][:12]}..., now {b[p][:12]}...)' for p in sorted(set(a) & set(b))
                if a[p] != b[p]]
    return out


class FeatureCacheWriter:
    """Writes one safetensors file per image; resumable (images indexed and readable are skipped).

    Args:
        root: the cache folder.
        meta: what :func:`mmseg_gate.cache.write_feature_cache` records (hashes, provenance, levels); the
            files of ``meta['gate_frozen']`` are fingerprinted here into ``meta['sources']``.
        dtype: ``torch.float16`` (half the size; SD features fit its range) or ``torch.float32`` (exact).
        overwrite: start afresh whatever the folder holds (another config, changed files, damaged metadata)
            instead of refusing it.
    """

    def __init__(self, root: str, meta: dict, dtype: torch.dtype = torch.float16, overwrite: bool = False) -> None:
        self.root, self.meta, self.dtype = root, dict(meta, version=CACHE_VERSION, dtype=str(dtype)), dtype
        os.makedirs(osp.join(root, 'features'), exist_ok=True)
        self._journal_lines = 0
        old = None if overwrite or not osp.isfile(osp.join(root, META)) else read_meta(root)
        frozen = self.meta.get('gate_frozen') or {}
        self.meta['sources'] = fingerprint_sources(
            source_files(frozen), previous=(old or {}).get('sources'),
            known_sha256={**(frozen.get('loras') or {}), **(frozen.get('ip_adapters') or {})})
        if old is not None:
            self._refuse_if_different(old)
        self.index: dict[str, dict] = {} if old is None else read_index(root)
        # compacted now: a journal line cut short by a kill must not swallow the next one appended; afresh, the
        # old index goes before the new meta.json arrives (never new meta + old features)
        self.flush()
        atomic_write_json(osp.join(root, META), self.meta, indent=1, default=str)
        self._checked: set[str] = set()

    def _refuse_if_different(self, old: Mapping) -> None:
        """:class:`StaleCacheError` naming each setting and file that differs from the cache's."""
        new, diffs = self.meta, []
        if old.get('backbone_hash') != new['backbone_hash']:
            diffs += backbone_differences(old.get('backbone') or {}, new['backbone']) or [
                f"backbone hash: cache {old.get('backbone_hash')}, this config {new['backbone_hash']}"]
        if old.get('pipeline_hash') != new['pipeline_hash']:
            diffs += config_differences(old.get('pipeline'), _as_stored(new['pipeline']), 'pipeline')
        if old.get('dtype') != new['dtype']:
            diffs.append(f"dtype: cache {old.get('dtype')}, this run {new['dtype']}")
        if 'sources' in old:
            diffs += source_changes(old['sources'], new['sources'])
        else:
            diffs += _provenance_sha_changes(old.get('gate_frozen') or {}, new.get('gate_frozen') or {})
        if diffs:
            raise StaleCacheError(f'{self.root} holds a cache made from other settings or files: '
                                  f'{"; ".join(diffs)}. Pass --overwrite to rebuild it, or choose another --out')

    def __contains__(self, img_path: str) -> bool:
        """Whether the image is cached and its file readable (an unreadable one is dropped: extracted again)."""
        key = image_key(img_path)
        if key not in self.index:
            return False
        if key not in self._checked:
            problem = entry_problem(self.root, key, self.index[key], self.meta)
            if problem:
                print_log(f"feature cache: {self.index[key]['file']} ({key}) cannot be read ({problem}): "
                          'extracting it again', logger='current', level=30)
                del self.index[key]
                return False
            self._checked.add(key)
        return True

    def add(self, img_path: str, levels: Sequence[Sequence[torch.Tensor]], info: Mapping[str, Any]) -> str:
        """Store one image's ``extract()`` output (``levels[i][branch]``, each ``[1, C, h, w]``), then record it
        in the journal (so it survives a kill)."""
        key = image_key(img_path)
        name = hashlib.sha1(key.encode()).hexdigest()[:20] + '.safetensors'
        tensors = {f'level{i}': torch.cat([b.detach() for b in lvl], 0).to('cpu', self.dtype).contiguous()
                   for i, lvl in enumerate(levels)}
        metadata = dict(img_path=key, backbone_hash=str(self.meta['backbone_hash']))
        atomic_save(lambda p: save_file(tensors, p, metadata=metadata), osp.join(self.root, 'features', name))
        entry = dict(file=name, **{k: list(v) if isinstance(v, tuple) else v for k, v in info.items()})
        self._journal(key, entry)
        self.index[key] = entry
        self._checked.add(key)
        if self._journal_lines >= max(COMPACT_EVERY, len(self.index) // 4):  # O(images) bytes written in all
            self.flush()
        return name

    def _journal(self, key: str, entry: dict) -> None:
        with open(osp.join(self.root, JOURNAL), 'a') as f:
            f.write(json.dumps(dict(key=key, **entry), default=str) + '\n')
            f.flush()
            os.fsync(f.fileno())
        self._journal_lines += 1

    def flush(self) -> None:
        """Compact: the whole index into ``index.json`` (atomically), then the journal goes."""
        atomic_write_json(osp.join(self.root, INDEX), self.index, default=str)
        journal = osp.join(self.root, JOURNAL)
        if osp.exists(journal):
            os.remove(journal)
        self._journal_lines = 0


class FeatureCache:
    """Reads a cache folder. ``read(img_path)`` -> (``[level]`` tensors ``[branches, C, h, w]``, info).

    Args:
        root: the cache folder.
        backbone: the backbone config the features must come from (refused with a message otherwise);
            ``None`` skips the check.
        pipeline: the image pipeline they must come from; ``None`` skips the check.
        check_sources: refuse the cache when a file it was built from changed (a stat per file; hashed again
            only when its size or modification time changed).
    """

    def __init__(self, root: str, backbone: Mapping | None = None, pipeline: Any = None,
                 check_sources: bool = True) -> None:
        if not has_cache(root):
            raise FileNotFoundError(f'no feature cache in {root!r}: make it with '
                                    f'python tools/cache_features.py CONFIG --out {root}')
        self.root, self.meta, self.index = root, read_meta(root), read_index(root)
        check_fresh(self.meta, backbone, pipeline, root, sources=check_sources)

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
        path = osp.join(self.root, 'features', info['file'])
        try:
            with safe_open(path, framework='pt') as f:
                written_for = f.metadata().get('backbone_hash')
                levels = [f.get_tensor(f'level{i}') for i in range(len(self.meta['levels']))]
        except (SafetensorError, OSError) as e:
            raise DamagedCacheError(
                f'{path} (the features of {image_key(img_path)}) cannot be read ({type(e).__name__}: {e}): re-run '
                f'python tools/cache_features.py CONFIG --out {self.root}: it extracts unreadable entries again') from e
        if written_for != self.meta['backbone_hash']:
            raise StaleCacheError(f"{info['file']} in {self.root!r} was written for another backbone "
                                  'config than meta.json says: rebuild the cache with --overwrite')
        return levels, info
