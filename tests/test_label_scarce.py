"""Label-scarce segmentation: DDPM-segmentation datasets, the pixel-classifier ensemble, the feature cache."""
import copy

import numpy as np
import pytest
import torch
from conftest import backbone_cfg, build

SIZE = 32


@pytest.fixture(scope='module')
def horse_root(tmp_path_factory):
    from mmseg_gate.testing.synthetic_data import make_ddpm_segmentation_like
    return make_ddpm_segmentation_like(tmp_path_factory.mktemp('ddpm'), 'horse_21', num_train=3, num_test=3,
                                       size=SIZE)


def _dataset(root, pipeline=(), **kw):
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules
    import mmseg_gate  # noqa: F401
    register_all_modules()  # default scope mmseg: the pipeline's transforms are found (as the Runner does)
    return DATASETS.build(dict(type='Horse21Dataset', data_root=str(root), pipeline=list(pipeline), **kw))


def test_dataset_reads_the_published_layout_and_splits(horse_root):
    from mmseg_gate.datasets.ddpm_segmentation import HORSE_21
    train, test = _dataset(horse_root, split='train'), _dataset(horse_root, split='test')
    assert len(train) == 3 and len(test) == 3 and train.metainfo['classes'] == HORSE_21
    assert len(train.metainfo['palette']) == 21
    info = train.get_data_info(0)
    assert info['img_path'].endswith('.png') and info['seg_map_path'] == info['img_path'][:-4] + '.npy'
    # the paper's protocol: pooled, shuffled by the seed, first len(train) for training; reproducible
    s0 = [_dataset(horse_root, split=p, split_seed=0) for p in ('train', 'test')]
    paths = [[d.get_data_info(i)['img_path'] for i in range(len(d))] for d in s0]
    assert len(paths[0]) == 3 and not set(paths[0]) & set(paths[1])
    assert len(set(paths[0] + paths[1])) == 6  # all published images, each once
    assert paths[0] == [_dataset(horse_root, split='train', split_seed=0).get_data_info(i)['img_path'] for i in range(3)]
    assert any(paths[0] != [_dataset(horse_root, split='train', split_seed=s).get_data_info(i)['img_path']
                            for i in range(3)] for s in (1, 2, 3))
    # labels: .npy, resized nearest to label_size (ori_shape follows), small regions ignored
    item = _dataset(horse_root, [dict(type='LoadImageFromFile'),
                                 dict(type='LoadNpyAnnotations', label_size=(16, 16), min_region_pixels=20),
                                 dict(type='PackSegInputs')], split='train')[0]
    gt = item['data_samples'].gt_sem_seg.data
    assert gt.shape == (1, 16, 16) and item['data_samples'].ori_shape == (16, 16)
    values, counts = np.unique(gt.numpy(), return_counts=True)
    assert all(c >= 20 for v, c in zip(values, counts) if v != 255)


def test_pixel_classifier_widths_and_ensemble_vote():
    head = build(dict(type='PixelClassifierHead', in_channels=[4, 3], num_classes=21, num_models=3))
    assert [m.out_features for m in head.members[0] if isinstance(m, torch.nn.Linear)] == [128, 32, 21]
    assert isinstance(head.members[0][2], torch.nn.BatchNorm1d)
    wide = build(dict(type='PixelClassifierHead', in_channels=8, num_classes=34, num_models=1))
    assert [m.out_features for m in wide.members[0] if isinstance(m, torch.nn.Linear)] == [256, 128, 34]
    # majority vote of the members' argmax; a tie goes to the smaller class (torch.mode, as the authors')
    onehot = torch.eye(21)
    logits = [onehot[[2, 5, 7]], onehot[[2, 1, 3]], onehot[[4, 1, 9]]]
    votes = head.combine(logits)
    expected = torch.mode(torch.stack([lg.argmax(1) for lg in logits], -1), -1).values
    assert torch.equal(votes.argmax(1), expected) and votes.argmax(1).tolist() == [2, 1, 3]
    assert torch.allclose(votes.sum(1), torch.ones(3))
    head.ensemble = 'mean_softmax'
    assert torch.allclose(head.combine(logits), torch.stack([lg.softmax(1) for lg in logits]).mean(0))
    # prediction: per-pixel features are the levels bilinearly upsampled to the output size
    head.eval()
    feats = [torch.randn(1, 4, 4, 4), torch.randn(1, 3, 2, 2)]
    out = head(feats, (8, 8))
    up = torch.cat([torch.nn.functional.interpolate(f, (8, 8), mode='bilinear', align_corners=False)
                    for f in feats], 1)
    px = up.permute(0, 2, 3, 1).reshape(-1, 7)
    ref = head.combine([m(px) for m in head.members]).t().reshape(1, 21, 8, 8)
    assert torch.allclose(out, ref, atol=1e-5)


def _configs(tiny, horse_root, cache_root):
    """A tiny live label-scarce config and its cached twin (two branches, amalgamation, pixel head)."""
    from mmengine.config import Config
    norm = dict(type='BN', requires_grad=True)
    bb = backbone_cfg(tiny, branches=[dict(name='a'), dict(name='b', prompt='a horse')],
                      amalgamation=dict(hidden_channels=8, refine_blocks=1, fuse_blocks=1, dropout=0.0, norm_cfg=norm))
    size = (SIZE, SIZE)
    image = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=size, keep_ratio=False)]
    label = dict(type='LoadNpyAnnotations', label_size=size)
    cached = [dict(type='LoadCachedFeatures', cache_root=str(cache_root)), label, dict(type='PackCachedSegInputs')]
    head = dict(type='PixelClassifierHead', in_channels=[64, 64, 64], num_classes=21, num_models=2,
                hidden=(16, 8), pixels_per_image=64, loss_decode=dict(type='CrossEntropyLoss'))
    pre = dict(type='SegDataPreProcessor', mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True, size=size)

    def loaders(pipe_train, pipe_test):
        ds = dict(type='Horse21Dataset', data_root=str(horse_root), split_seed=0)
        return dict(
            train_dataloader=dict(batch_size=2, num_workers=0, sampler=dict(type='InfiniteSampler', shuffle=True),
                                  dataset=dict(ds, split='train', pipeline=pipe_train)),
            test_dataloader=dict(batch_size=1, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                                 dataset=dict(ds, split='test', pipeline=pipe_test)),
            test_evaluator=dict(type='IoUMetric', iou_metrics=['mIoU']), test_cfg=dict(type='TestLoop'))

    common = dict(default_scope='mmseg', custom_imports=dict(imports=['mmseg_gate']),
                  optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-3)),
                  train_cfg=dict(type='IterBasedTrainLoop', max_iters=3), randomness=dict(seed=0),
                  default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1000),
                                     logger=dict(type='LoggerHook', interval=1)),
                  cache_pipeline=image + [dict(type='PackSegInputs')])
    live = Config(dict(common, model=dict(type='EncoderDecoder', data_preprocessor=pre, backbone=bb, decode_head=head,
                                          test_cfg=dict(mode='whole')),
                       **loaders(image + [label, dict(type='PackSegInputs')], image + [label, dict(type='PackSegInputs')])))
    cache = Config(dict(common, cache_root=str(cache_root), cache_preprocessor=pre,
                        model=dict(type='CachedFeatureEncoderDecoder', cache_root=str(cache_root), backbone=bb,
                                   cache_pipeline=common['cache_pipeline'], decode_head=head,
                                   data_preprocessor=dict(type='CachedFeaturePreprocessor'),
                                   test_cfg=dict(mode='whole')),
                        **loaders(cached, cached)))
    return live, cache


@pytest.fixture(scope='module')
def cached(tiny, horse_root, tmp_path_factory):
    from mmseg_gate.cache import write_feature_cache
    root = tmp_path_factory.mktemp('cache') / 'horse'
    live, cache = _configs(tiny, horse_root, root)
    summary = write_feature_cache(cache, str(root), splits=('train', 'test'), dtype='float32', device='cpu')
    assert summary['images'] == 6 and summary['total'] == 6
    return live, cache, root


@pytest.fixture(scope='module')
def live_model(cached):
    """The live model of ``cached``, built once. The head test trains it: only the amalgamation and the head
    change, not ``backbone.extract()`` (frozen SD, fixed noise), so the tests hold in either order."""
    return build(copy.deepcopy(cached[0].model))


def test_cached_features_equal_the_live_backbone(cached, live_model, horse_root):
    from mmengine.dataset import pseudo_collate
    from mmseg_gate.cache import FeatureCache
    live, cache, root = cached
    model = live_model.eval()
    store = FeatureCache(str(root), backbone=live.model.backbone, pipeline=live.cache_pipeline)
    assert store.meta['gate_frozen'] == model.backbone.frozen_provenance()
    ds = _dataset(horse_root, live.cache_pipeline, split='all')
    for i in (0, 4):
        batch = model.data_preprocessor(pseudo_collate([ds[i]]), False)
        want = model.backbone.extract(batch['inputs'])
        got, info = store.read(ds.get_data_info(i)['img_path'])
        assert info['ori_shape'] == [SIZE, SIZE] and len(got) == len(want) == 3
        for g, w in zip(got, want):
            assert g.dtype == torch.float32 and torch.equal(g, torch.cat(w, 0))  # [branches, C, h, w]


def test_head_trained_from_the_cache_equals_live_training(cached, live_model):
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import DATASETS
    live_cfg, cache_cfg, _ = cached
    models = [live_model, build(copy.deepcopy(cache_cfg.model))]
    models[0].init_weights()
    state = models[0].state_dict()
    assert set(state) == set(models[1].state_dict())  # same keys: checkpoints move between the two
    models[1].load_state_dict(state)
    datasets = [DATASETS.build(c.train_dataloader.dataset) for c in (live_cfg, cache_cfg)]
    # SGD: the cache holds single-image extractions, live training extracts the batch of 2 (float rounding
    # differs by ~1e-7); Adam divides by sqrt(v) and turns such a difference in a near-zero gradient into a
    # step of lr, SGD keeps it proportional, so the parameters can be compared tightly
    sgd = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1, momentum=0.9))
    wrappers = [build_optim_wrapper(m, sgd) for m in models]
    for step in range(3):
        losses = []
        for m, ds, w in zip(models, datasets, wrappers):
            m.train()
            torch.manual_seed(step)  # the same pixel draws for both
            losses.append(m.train_step(pseudo_collate([ds[step % 3], ds[(step + 1) % 3]]), w))
        assert torch.allclose(losses[0]['decode.loss_ce'], losses[1]['decode.loss_ce'], rtol=1e-5, atol=1e-6)
    for k, v in models[0].state_dict().items():
        assert torch.allclose(v.float(), models[1].state_dict()[k].float(), rtol=1e-4, atol=1e-5), k


def test_split_command_prints_mean_and_std(cached, tmp_path, monkeypatch, capsys):
    """tools/label_scarce_splits.py through its command line (two seeds here, five by default): one line
    `mIoU mean ± std over N splits (split s: v, ...)`, splits.json with the same numbers, a run per split."""
    import json
    import re
    import runpy
    import sys
    from pathlib import Path
    _, cache_cfg, _ = cached
    cache_cfg.dump(str(tmp_path / 'cfg.py'))
    tool = Path(__file__).resolve().parents[1] / 'tools' / 'label_scarce_splits.py'
    monkeypatch.setattr(sys, 'argv', [str(tool), str(tmp_path / 'cfg.py'), '--seeds', '0', '1',
                                      '--work-dir', str(tmp_path / 'runs')])
    runpy.run_path(str(tool), run_name='__main__')
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(r'mIoU (\d+\.\d\d) ± (\d+\.\d\d) over 2 splits \(split 0: (\d+\.\d\d), split 1: (\d+\.\d\d)\)', line)
    assert m, line
    result = json.loads((tmp_path / 'runs' / 'splits.json').read_text())
    scores = [result['scores'][k] for k in ('0', '1')]
    assert result['metric'] == 'mIoU' and all(0 <= v <= 100 for v in scores)
    assert result['mean'] == pytest.approx(np.mean(scores)) and result['std'] == pytest.approx(np.std(scores, ddof=1))
    assert [float(g) for g in m.groups()] == [round(v, 2) for v in (result['mean'], result['std'], *scores)]
    assert all((tmp_path / 'runs' / f'split{s}').is_dir() for s in (0, 1))


def test_stale_cache_is_refused(cached):
    from mmseg_gate.cache import FeatureCache, StaleCacheError
    _, cache_cfg, root = cached
    other = copy.deepcopy(cache_cfg.model)
    other.backbone.timestep = 60
    with pytest.raises(StaleCacheError, match='stale.*tools/cache_features.py'):
        build(other)
    with pytest.raises(StaleCacheError, match='image pipeline'):
        FeatureCache(str(root), pipeline=[dict(type='LoadImageFromFile')])
    # the trainable amalgamation and speed-only options are not part of the features: accepted
    same = copy.deepcopy(cache_cfg.model)
    same.backbone.amalgamation = dict(hidden_channels=4, refine_blocks=0, fuse_blocks=0)
    same.backbone.feed_forward_chunks = 1
    build(same)


def test_label_scarce_configs_parse_and_the_tiny_head_fits_its_backbone(tiny):
    """The shipped label-scarce configs parse (live and cached), and the tiny twin's head in_channels are what
    its backbone (two branches, attention maps merged at 1/8) gives on the tiny assets."""
    from pathlib import Path
    from mmengine.config import Config
    root = Path(__file__).resolve().parents[1] / 'configs' / 'label_scarce'
    for name in ('gate_sd15_horse21', 'gate_sd15_bedroom28', 'tiny_horse21'):
        live, cached = Config.fromfile(str(root / f'{name}.py')), Config.fromfile(str(root / f'{name}_cached.py'))
        assert live.model.type == 'EncoderDecoder' and cached.model.type == 'CachedFeatureEncoderDecoder'
        assert cached.model.backbone == live.model.backbone  # what the cache's hash is checked against
        assert cached.cache_preprocessor == live.model.data_preprocessor
        assert cached.model.decode_head == live.model.decode_head
        for key in ('train_dataloader', 'test_dataloader'):  # the same data (bedroom: set again over horse's)
            ds, live_ds = cached[key].dataset, live[key].dataset
            assert {k: v for k, v in ds.items() if k != 'pipeline'} == {k: v for k, v in live_ds.items() if k != 'pipeline'}
            assert ds.pipeline[0] == dict(type='LoadCachedFeatures', cache_root=cached.cache_root) == dict(
                type='LoadCachedFeatures', cache_root=cached.model.cache_root)
    assert Config.fromfile(str(root / 'linear_probe_ade20k_cached.py')).model.type == 'CachedFeatureEncoderDecoder'
    cfg = Config.fromfile(str(root / 'tiny_horse21.py'))
    canny = dict(cfg.model.backbone.branches[1].controlnets[0], path=str(tiny / 'controlnet-canny'))
    bb = dict(cfg.model.backbone, pretrained=str(tiny / 'sd'),
              branches=[dict(name='prompt'), dict(name='prompt_canny', controlnets=[canny])])
    assert build(bb).out_channels == cfg.model.decode_head.in_channels
