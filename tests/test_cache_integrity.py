"""The feature cache loses nothing and is never silently wrong (issue 27): a killed run resumes where it stopped,
damaged files are named and extracted again, --overwrite always works, a LoRA replaced at the same path is
refused when writing and reading, and a stale cache names the settings that differ."""
import copy
import json
import os
import re
import shutil

import pytest
from conftest import build
from test_label_scarce import SIZE, _configs

SPLITS = ('train', 'test')


@pytest.fixture(scope='module')
def horse_root(tmp_path_factory):
    from mmseg_gate.testing.synthetic_data import make_ddpm_segmentation_like
    return make_ddpm_segmentation_like(tmp_path_factory.mktemp('ddpm'), 'horse_21', num_train=3, num_test=3,
                                       size=SIZE)


def _write(cfg, root, **kw):
    from mmseg_gate.cache import write_feature_cache
    return write_feature_cache(cfg, str(root), splits=kw.pop('splits', SPLITS), dtype='float32', device='cpu', **kw)


@pytest.fixture()
def cache(tiny, horse_root, tmp_path):
    """A freshly written cache of the 6 images (its cached config, its folder)."""
    root = tmp_path / 'cache'
    cfg = _configs(tiny, horse_root, root)[1]
    assert _write(cfg, root)['images'] == 6
    return cfg, root


def _count_adds(monkeypatch, fail_at=None):
    """Record the images the writer stores; the ``fail_at``-th save is cut short by a 'kill' mid-write."""
    from mmseg_gate.cache import store
    added, save = [], store.save_file

    def add(self, img_path, levels, info, _add=store.FeatureCacheWriter.add):
        added.append(img_path)
        return _add(self, img_path, levels, info)

    def killed_save(tensors, path, metadata=None):
        if len(added) == fail_at:
            save(tensors, path, metadata=metadata)
            with open(path, 'r+b') as f:
                f.truncate(os.path.getsize(path) // 2)
            raise KeyboardInterrupt('killed while writing')
        return save(tensors, path, metadata=metadata)

    monkeypatch.setattr(store.FeatureCacheWriter, 'add', add)
    monkeypatch.setattr(store, 'save_file', killed_save)
    return added


def _feature_file(root, img_path):
    from mmseg_gate.cache.store import image_key, read_index
    return root / 'features' / read_index(str(root))[image_key(img_path)]['file']


def test_a_killed_run_resumes_where_it_stopped(tiny, horse_root, tmp_path, monkeypatch):
    from mmseg_gate.cache import FeatureCache
    from mmseg_gate.utils.atomic import leftover_temporaries
    root = tmp_path / 'cache'
    cfg = _configs(tiny, horse_root, root)[1]
    added = _count_adds(monkeypatch, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        _write(cfg, root)  # 3 images stored, killed while writing the 4th
    first = list(added)
    assert len(first) == 4 and not leftover_temporaries(root / 'features')
    assert len(os.listdir(root / 'features')) == 3  # the 4th never appears half-written under its name
    with open(root / 'index.journal', 'a') as f:
        f.write('{"key": "/cut/short", "fi')  # a journal line cut short by the kill
    added.clear()
    summary = _write(cfg, root)
    assert summary['images'] == 3 and summary['skipped'] == 3 and summary['total'] == 6
    assert len(added) == 3 and first[3] in added and not set(added) & set(first[:3])  # only the missing ones
    store = FeatureCache(str(root))
    assert len(store) == 6 and not (root / 'index.journal').exists()  # compacted into index.json
    for path in store.index:
        assert [lv.shape[0] for lv in store.read(path)[0]] == [2, 2, 2]


def test_an_unreadable_entry_is_named_and_extracted_again(cache, monkeypatch):
    from mmseg_gate.cache import DamagedCacheError, FeatureCache
    cfg, root = cache
    img = sorted(FeatureCache(str(root)).index)[2]
    file = _feature_file(root, img)
    with open(file, 'r+b') as f:
        f.truncate(os.path.getsize(file) - 100)
    with pytest.raises(DamagedCacheError, match=rf'{re.escape(str(file))} \(the features of {re.escape(img)}\) '
                                                r'cannot be read .*tools/cache_features.py'):
        FeatureCache(str(root)).read(img)
    added = _count_adds(monkeypatch)
    summary = _write(cfg, root)
    assert added == [img] and summary['images'] == 1 and summary['skipped'] == 5
    FeatureCache(str(root)).read(img)


@pytest.mark.parametrize('name', ['meta.json', 'index.json'])
def test_a_cut_short_metadata_file_is_named_and_overwrite_always_works(cache, name):
    from mmseg_gate.cache import DamagedCacheError, FeatureCache
    cfg, root = cache
    path = root / name
    path.write_text(path.read_text()[:40])
    hint = rf'{re.escape(str(path))} cannot be read \(JSONDecodeError: .*\): rebuild the cache: .*--overwrite'
    with pytest.raises(DamagedCacheError, match=hint):
        FeatureCache(str(root))
    with pytest.raises(DamagedCacheError, match=hint):
        _write(cfg, root, splits=('train',))
    assert _write(cfg, root, splits=('train',), overwrite=True)['images'] == 3
    store = FeatureCache(str(root))
    assert len(store) == 3 and json.loads(path.read_text())  # whole again, written atomically


def test_a_lora_replaced_at_the_same_path_is_refused_when_writing_and_reading(tiny, horse_root, tmp_path):
    from mmseg_gate.cache import FeatureCache, StaleCacheError
    from mmseg_gate.utils.files import file_sha256
    lora = tmp_path / 'style.safetensors'
    shutil.copyfile(tiny / 'lora' / 'a.safetensors', lora)
    root = tmp_path / 'cache'
    cfg = _configs(tiny, horse_root, root)[1]
    cfg.model.backbone.branches[1]['loras'] = [dict(path=str(lora), scale=1.0)]
    _write(cfg, root, splits=('train',))
    old_sha = file_sha256(lora)
    meta = json.loads((root / 'meta.json').read_text())
    assert meta['sources'][str(lora)]['sha256'] == old_sha == meta['gate_frozen']['loras'][str(lora)]
    assert any(p.endswith('unet/config.json') for p in meta['sources'])  # the model's files are recorded too

    stat = os.stat(lora)  # touched, same bytes: accepted (hashed again, same sha256)
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    FeatureCache(str(root))

    shutil.copyfile(tiny / 'lora' / 'b.safetensors', lora)  # replaced
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    changed = rf'{re.escape(str(lora))}: changed \(sha256 cache {old_sha[:12]}\.\.\., now {file_sha256(lora)[:12]}'
    with pytest.raises(StaleCacheError, match='files it was built from changed since: ' + changed):
        FeatureCache(str(root))
    with pytest.raises(StaleCacheError, match=changed):
        build(copy.deepcopy(cfg.model))  # the cached model, for training
    with pytest.raises(StaleCacheError, match='holds a cache made from other settings or files: ' + changed):
        _write(cfg, root, splits=('train',))
    assert json.loads((root / 'meta.json').read_text())['sources'][str(lora)]['sha256'] == old_sha  # untouched
    assert _write(cfg, root, splits=('train',), overwrite=True)['images'] == 3
    assert FeatureCache(str(root)).meta['sources'][str(lora)]['sha256'] == file_sha256(lora)


def test_a_stale_cache_names_the_settings_that_differ(cache):
    from mmseg_gate.cache import FeatureCache, StaleCacheError
    cfg, root = cache
    other = copy.deepcopy(cfg)
    other.model.backbone.timestep = 150
    other.model.backbone.branches[1]['prompt'] = 'a pony'
    names = (r"backbone.branches\[1\].prompt: cache \"a horse\", this config \"a pony\"; "
             'backbone.timestep: cache 50, this config 150')
    with pytest.raises(StaleCacheError, match=rf'stale: .*backbone config \({names}; hash: .*tools/cache_features'):
        FeatureCache(str(root), backbone=other.model.backbone)
    with pytest.raises(StaleCacheError, match=r'image pipeline.*pipeline\[1\].scale: cache \[32, 32\], this '
                                              r'config \[64, 64\]'):
        FeatureCache(str(root), pipeline=[cfg.cache_pipeline[0], dict(cfg.cache_pipeline[1], scale=(64, 64)),
                                          cfg.cache_pipeline[2]])
    with pytest.raises(StaleCacheError, match=f'other settings or files: {names}. Pass --overwrite'):
        _write(other, root, splits=('train',))


def test_controlnet_and_model_files_are_fingerprinted_and_checked(tiny, tmp_path, monkeypatch):
    """ControlNet weight files always carry a sha256; the SD folder's large files only when cheap (else size and
    mtime), a hub-cache blob's name is its sha256; a replaced file is refused by name."""
    from mmseg_gate.cache import StaleCacheError, check_sources
    from mmseg_gate.cache import provenance as prov
    from mmseg_gate.utils.files import file_sha256
    net, sd = tmp_path / 'controlnet', tmp_path / 'sd'
    shutil.copytree(tiny / 'controlnet-canny', net)
    shutil.copytree(tiny / 'sd', sd)
    monkeypatch.setattr(prov, 'CHEAP_HASH_BYTES', 100_000)  # the tiny UNet weights count as large here
    frozen = dict(pretrained=str(sd), controlnets=[str(net)], loras={})
    files = prov.source_files(frozen)
    meta = dict(gate_frozen=frozen, sources=prov.fingerprint_sources(files))
    weights = net / 'diffusion_pytorch_model.safetensors'
    unet = sd / 'unet' / 'diffusion_pytorch_model.safetensors'
    assert meta['sources'][str(weights)]['sha256'] == file_sha256(weights)
    assert 'sha256' not in meta['sources'][str(unet)] and meta['sources'][str(sd / 'unet' / 'config.json')]['sha256']
    assert not any('safety_checker' in p for p in files)
    check_sources(meta)
    with open(weights, 'r+b') as f:  # replaced in place, same size
        f.seek(-4, 2)
        f.write(b'\0\1\2\3')
    os.utime(weights, ns=(0, os.stat(weights).st_mtime_ns + 10**9))
    with pytest.raises(StaleCacheError, match=rf'{re.escape(str(weights))}: changed \(sha256 cache'):
        check_sources(meta, 'CACHE')
    meta['sources'] = prov.fingerprint_sources(files)
    os.utime(unet, ns=(0, os.stat(unet).st_mtime_ns + 10**9))  # large, no sha256: a new mtime is a change
    with pytest.raises(StaleCacheError, match=rf'{re.escape(str(unet))}: changed \(size .* sha256 not recorded'):
        check_sources(meta)
    os.remove(unet)
    with pytest.raises(StaleCacheError, match=rf'{re.escape(str(unet))}: missing'):
        check_sources(meta)
    blob = tmp_path / 'hub' / 'blobs' / ('ab' * 32)  # the hub cache: snapshots/<rev>/<file> -> blobs/<sha256>
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b'x' * 200_000)
    (tmp_path / 'link.safetensors').symlink_to(blob)
    assert prov.fingerprint(str(tmp_path / 'link.safetensors'), always_hash=False)['sha256'] == 'ab' * 32


def test_cached_segmentor_names_a_damaged_meta_json(tmp_path):
    """The cached model reads meta.json through the cache's reader: a cut-short file is named, with the fix."""
    from mmseg_gate.cache import DamagedCacheError
    from conftest import build
    (tmp_path / 'meta.json').write_text('{"backbone": {"type": "GATEDiff')
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmseg'), \
            pytest.raises(DamagedCacheError, match=r'meta.json cannot be read .*--overwrite'):
        build(dict(type='CachedFeatureEncoderDecoder', cache_root=str(tmp_path), backbone=dict(), decode_head=dict()))
