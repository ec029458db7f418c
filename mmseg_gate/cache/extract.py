"""Extract a backbone's eval-mode features once per image into a cache (``tools/cache_features.py``)."""
from __future__ import annotations

import copy
import time

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.logging import print_log
from mmseg.registry import DATASETS, MODELS

from .provenance import backbone_hash, config_hash
from .store import FeatureCacheWriter

DTYPES = {'float16': torch.float16, 'float32': torch.float32}


def write_feature_cache(cfg: Config, out: str, splits=('train', 'val', 'test'), dtype: str = 'float16',
                        device: str | torch.device | None = None, overwrite: bool = False) -> dict:
    """Cache ``cfg.model.backbone``'s ``extract()`` output for every image of the splits' datasets.

    The images go through ``cfg.cache_pipeline`` (image only, no augmentation: what the live test pipeline
    does to them) and ``cfg.cache_preprocessor`` (default ``cfg.model.data_preprocessor``); the backbone
    (``cfg.model.backbone``, live or cached config alike) runs in eval mode. Each image is recorded as soon as
    its file is written, and images already cached (same config and files, file readable) are skipped: an
    interrupted run resumes after its last image, and an unreadable entry is extracted again. A cache of other
    settings or files is refused naming them, unless ``overwrite``. Returns a summary (images extracted,
    skipped, total, MiB per image, seconds).
    """
    if 'cache_pipeline' not in cfg:
        raise KeyError('the config has no cache_pipeline: the image-only pipeline features are extracted with '
                       '(e.g. LoadImageFromFile -> Resize -> PackSegInputs), see docs/label_scarce.md')
    if dtype not in DTYPES:
        raise ValueError(f'dtype={dtype!r}: use one of {sorted(DTYPES)}')
    import mmseg_gate  # noqa: F401  (registers the backbone)
    from mmengine.registry import init_default_scope
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    init_default_scope(cfg.get('default_scope', 'mmseg'))  # the pipelines' transforms, as under the Runner
    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    noise = backbone_cfg.get('noise', 'gate')
    if noise in ('gate', 'random'):
        print_log(f"backbone noise={noise!r}: live training draws fresh noise each step, the cache holds the eval "
                  "features; noise='fixed' or 'none' makes them the same (docs/label_scarce.md)", logger='current')
    pre_cfg = cfg.get('cache_preprocessor') or cfg.model.data_preprocessor  # a cached config names the live one
    if pre_cfg.get('type') == 'CachedFeaturePreprocessor':
        raise KeyError('this cached config has no cache_preprocessor (the live data_preprocessor): add '
                       'cache_preprocessor = {{_base_.model.data_preprocessor}}')
    preprocessor = MODELS.build(pre_cfg)
    backbone = MODELS.build(backbone_cfg).eval()
    device = torch.device(device) if device is not None else torch.device('cuda' if torch.cuda.is_available()
                                                                           else 'cpu')
    backbone.to(device)
    preprocessor.to(device)
    meta = dict(backbone=backbone_cfg.to_dict() if hasattr(backbone_cfg, 'to_dict') else dict(backbone_cfg),
                backbone_hash=backbone_hash(backbone_cfg), pipeline=list(cfg.cache_pipeline),
                pipeline_hash=config_hash(list(cfg.cache_pipeline)), gate_frozen=backbone.frozen_provenance(),
                levels=[dict(channels=c, stride=s) for c, s in zip(_raw_channels(backbone), backbone.strides)],
                branches=[s.name for s in backbone.specs])
    writer = FeatureCacheWriter(out, meta, DTYPES[dtype], overwrite)
    done, skipped, nbytes, start = 0, 0, 0, time.perf_counter()
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader:
            continue
        ds_cfg = copy.deepcopy(loader['dataset'])
        ds_cfg['pipeline'] = list(cfg.cache_pipeline)
        dataset = DATASETS.build(ds_cfg)
        for i in range(len(dataset)):
            path = dataset.get_data_info(i)['img_path']
            if path in writer:
                skipped += 1
                continue
            batch = preprocessor(pseudo_collate([dataset[i]]), False)
            levels = backbone.extract(batch['inputs'])
            m = batch['data_samples'][0].metainfo
            writer.add(path, levels, dict(ori_shape=tuple(m['ori_shape']), img_shape=tuple(m['img_shape'])))
            nbytes += sum(lv[0].numel() * len(lv) for lv in levels) * DTYPES[dtype].itemsize
            done += 1
            if done % 50 == 0:
                print_log(f'cached {done} images ({nbytes / done / 2**20:.2f} MiB each)', logger='current')
    writer.flush()
    secs = time.perf_counter() - start
    summary = dict(images=done, skipped=skipped, total=len(writer.index),
                   mib_per_image=nbytes / max(done, 1) / 2**20, seconds=secs)
    print_log(f'feature cache {out}: {summary}', logger='current')
    return summary


def _raw_channels(backbone) -> list[int]:
    """Channels per level of ``extract()`` (before amalgamation)."""
    return [sum(backbone.tap_info[i].channels for i in level) for level in backbone.levels]
