"""Monocular depth through mmseg's own depth stack (DepthEstimator, NYUDataset, VPDDepthHead, DepthMetric):
the configs, the four-level pyramid and its alignment, per-scene prompts, mmseg's depth defects our configs avoid,
and (e2e) the tiny depth demo and the swap of mmseg's VPD config trained through the tools."""
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config

from conftest import backbone_cfg, build
from test_tools_e2e import REPO, config, run, tool

DEPTH = sorted((REPO / 'configs' / 'depth').glob('*.py'))


@pytest.fixture(scope='module')
def registered():
    from mmseg.utils import register_all_modules
    import mmseg_gate  # noqa: F401
    register_all_modules()


def depth_model(tiny, config_name='demo/gate_tiny_depth_nyu.py', **backbone):
    """A config's DepthEstimator on the tiny assets; one plain branch unless ``branches`` is given."""
    from mmseg.registry import MODELS
    cfg = Config.fromfile(config(config_name))
    b = cfg.model.backbone
    b.update(pretrained=str(tiny / 'sd'), branches=[dict(name='plain')], amalgamation=None, noise='fixed')
    b.update(backbone)
    return MODELS.build(cfg.model)


def smooth_image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, 3, h // 8, w // 8, generator=g) * 2 - 1, size=(h, w), mode='bilinear')


def metas(h, w, **kw):
    return [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), **kw)]


# --------------------------------------------------------------------------------------------------- configs
def test_depth_configs_parse_and_agree_with_mmseg_depth_stack(registered):
    from mmseg_gate.engine.depth_checks import check_depth_config
    assert [p.name for p in DEPTH] == ['gate_flux1_dev_nyu.py', 'gate_pixart_sigma_nyu.py', 'gate_sd15_nyu.py',
                                       'gate_sd15_scene_prompts_nyu.py', 'gate_sd35_medium_nyu.py', 'gate_sdxl_nyu.py',
                                       'lora_nyu_a.py', 'lora_nyu_b.py', 'sd15_frozen_nyu.py', 'swap_vpd_sd_nyu.py']
    for path in DEPTH + [REPO / 'configs/demo/gate_tiny_depth_nyu.py', REPO / 'configs/demo/gate_tiny_depth_scenes_nyu.py']:
        cfg = Config.fromfile(str(path))
        if cfg.model.type != 'DepthEstimator':
            assert path.name.startswith('lora_'), path
            continue
        head, backbone = cfg.model.decode_head, cfg.model.backbone
        assert head.type == 'VPDDepthHead' and head.max_depth == 10, path
        assert head.get('loss_decode', dict(type='SiLogLoss'))['type'] == 'SiLogLoss', path  # the head's default
        assert backbone.pyramid['fmap_border'] == tuple(head.fmap_border) == (1, 1), path
        assert cfg.model.test_cfg.mode == 'slide_flip', path  # not 'slide': mmseg runs that whole (below)
        assert cfg.test_evaluator.type == 'DepthMetric' and cfg.test_evaluator.crop_type == 'nyu_crop', path
        assert 'depth_metrics' not in cfg.test_evaluator, path
        assert cfg.train_dataloader.dataset.type == 'NYUDataset', path
        assert 'category_id' in cfg.train_dataloader.dataset.pipeline[-1].meta_keys, path
        check_depth_config(cfg)


def test_swap_config_is_mmseg_vpd_config_but_the_backbone():
    """configs/depth/swap_vpd_sd_nyu.py = mmseg's VPD config, except the backbone, the UNet's lr_mult (moot) and the
    plugin's import and hook."""
    import mmseg
    vpd = Path(mmseg.__file__).parent / '.mim' / 'configs' / 'vpd' / 'vpd_sd_4xb8-25k_nyu-480x480.py'
    ours, theirs = Config.fromfile(config('depth/swap_vpd_sd_nyu.py')), Config.fromfile(str(vpd))
    assert ours.model.backbone.type == 'GATEDiffusionBackbone' and theirs.model.backbone.type == 'VPD'
    assert ours.optim_wrapper.paramwise_cfg.custom_keys == {}
    assert set(theirs.optim_wrapper.paramwise_cfg.custom_keys) == {'backbone.encoder_vq', 'backbone.unet'}
    for cfg in (ours, theirs):
        cfg.model.pop('backbone')
        cfg.optim_wrapper.paramwise_cfg.pop('custom_keys')
    extra = set(ours.keys()) - set(theirs.keys())
    assert extra == {'custom_imports', 'custom_hooks', 'sd_path'}, extra
    assert _unscoped({k: ours[k] for k in theirs.keys()}) == _unscoped({k: theirs[k] for k in theirs.keys()})


def _unscoped(node):
    """A config without the ``_scope_`` keys that inheriting through ``mmseg::`` adds."""
    if isinstance(node, dict):
        return {k: _unscoped(v) for k, v in node.items() if k != '_scope_'}
    return [_unscoped(v) for v in node] if isinstance(node, (list, tuple)) else node


# --------------------------------------------------------------------------------------------------- pyramid
def test_pyramid_gives_vpd_levels_on_the_padded_grid(tiny):
    from mmseg_gate.models.pyramid import SDXL_VPD_TAPS, VPD_TAPS
    sd = build(backbone_cfg(tiny, taps=VPD_TAPS, pyramid='vpd', amalgamation=None)).eval()
    assert sd.out_channels == [32, 64, 64, 64] and sd.strides == [8, 16, 32, 64]
    feats = sd(torch.zeros(1, 3, 96, 160))  # padded to 128x192: VPD's 480 -> 512 at a fifth
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    # SDXL's UNet ends at 1/32: the 1/64 level is the 2x2 average of the 1/32 one
    xl = build(backbone_cfg(tiny, pretrained=str(tiny / 'sdxl'), taps=SDXL_VPD_TAPS, pyramid='vpd',
                            amalgamation=None)).eval()
    assert xl.out_channels == [32, 64, 64, 64] and xl.strides == [8, 16, 32, 64]
    feats = xl(smooth_image(96, 96))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    torch.testing.assert_close(feats[3], F.avg_pool2d(feats[2], 2))
    with pytest.raises(ValueError, match=r"needs one level at each of the strides \[8, 16, 32, 64\].*strides \[16, 32\]"):
        build(backbone_cfg(tiny, taps=('up_blocks.1.upsamplers.0', 'up_blocks.0.upsamplers.0'), pyramid='vpd',
                           amalgamation=None))


#: per family: the depth config, the tiny folder, tiny taps (four for the DiTs' neck) and their width
FAMILIES = {
    'sdxl': ('depth/gate_sdxl_nyu.py', 'sdxl', None, None),
    'pixart': ('depth/gate_pixart_sigma_nyu.py', 'pixart-sigma',
               ('transformer_blocks.0', 'transformer_blocks.1.attn1', 'transformer_blocks.1', 'transformer_blocks.2'), 16),
    'sd3': ('depth/gate_sd35_medium_nyu.py', 'sd3',
            ('transformer_blocks.0', 'transformer_blocks.1.attn', 'transformer_blocks.1', 'transformer_blocks.2'), 16),
    'flux': ('depth/gate_flux1_dev_nyu.py', 'flux', ('transformer_blocks.0', 'transformer_blocks.1',
                                                     'single_transformer_blocks.0', 'single_transformer_blocks.1'), 16),
}


@pytest.mark.parametrize('family', list(FAMILIES))
def test_every_family_gives_the_depth_head_its_pyramid(tiny, tiny_dit, registered, family):
    """The SDXL and DiT depth configs on the tiny assets: four levels at 1/8..1/64 (SDXL: a pooled 1/64; DiTs: the
    MultiLevelNeck), the depth check passes, and a 96x96 crop gives a 96x96 depth map."""
    from mmseg.registry import MODELS
    from mmseg_gate.engine.depth_checks import check_depth_head
    name, folder, taps, width = FAMILIES[family]
    cfg = Config.fromfile(config(name))
    b = cfg.model.backbone
    b.update(pretrained=str((tiny if family == 'sdxl' else tiny_dit) / folder), dtype='fp32', quantization=None,
             branches=[dict(name='plain')], amalgamation=None, noise='fixed')
    head = cfg.model.decode_head
    head.update(embed_dim=16, feature_dim=128)
    if taps is None:
        head.in_channels = [32, 64, 64, 64]
    else:
        b.taps = taps
        cfg.model.neck.update(in_channels=[width] * 4, out_channels=32)
        head.in_channels = [32] * 4
    model = MODELS.build(cfg.model).eval()
    check_depth_head(model)
    with torch.no_grad():
        feats = model.extract_feat(smooth_image(96, 96))
        assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]  # the grid of 128: 96 + VPD's one padding cell
        assert model.predict(smooth_image(96, 96))[0].pred_depth_map.data.shape[-2:] == (96, 96)


def test_pyramid_refuses_inputs_the_head_would_misalign(tiny):
    from mmseg_gate.models.pyramid import VPD_TAPS
    bb = build(backbone_cfg(tiny, taps=VPD_TAPS, pyramid=dict(type='vpd', fmap_border=(1, 1)), amalgamation=None))
    with pytest.raises(ValueError, match=re.escape('input 128x128 is padded to 128x128') + '.*'
                       + re.escape('fmap_border=(1, 1): the head would drop 1 real row(s) of features')
                       + '.*' + re.escape('Set fmap_border=(0, 0) in both model.decode_head and model.backbone.pyramid')):
        bb(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match=re.escape('input 96x128') + r'.*drop 1 real column\(s\).*fmap_border=\(1, 0\)'):
        bb(torch.zeros(1, 3, 96, 128))  # whole-image inference of another size than the crops
    bb.pyramid = type(bb.pyramid)((0, 0))  # VPD's 512 config's border
    with pytest.raises(ValueError, match=re.escape('keep 1 row(s) of padding and keep 1 column(s) of padding')):
        bb(torch.zeros(1, 3, 96, 96))
    with pytest.raises(ValueError, match='input 100x96 is not a multiple of 32'):
        bb(torch.zeros(1, 3, 100, 96))
    with pytest.raises(ValueError, match='pyramid=.*use None, .vpd. or dict'):
        build(backbone_cfg(tiny, pyramid='fpn'))
    with pytest.raises(ValueError, match='unet_input_scale=0.5 resizes it'):
        build(backbone_cfg(tiny, taps=VPD_TAPS, pyramid='vpd', unet_input_scale=0.5))


def _blocks(model, feats, level, cell):
    """Mean |change of the 96x96 depth map| per 32x32 block (the head's 1/32 cells) when the features of ``level``
    at ``cell`` move a little (all channels; small, so that the head's GroupNorm statistics hardly move),
    relative to the largest block's."""
    bumped = [f.clone() for f in feats]
    bumped[level][..., cell[0], cell[1]] += 0.05
    with torch.no_grad():
        base, moved = (model.decode_head.predict(list(f), metas(96, 96), model.test_cfg) for f in (feats, bumped))
    blocks = (moved - base).abs()[0, 0].reshape(3, 32, 3, 32).mean((1, 3))
    return blocks / blocks.max()


def test_a_depth_pixel_comes_from_the_features_at_that_pixel(tiny):
    """Moving the features of one cell moves the depth map under that cell (the head's 1/32 grid on the input's
    grid), for the 1/8, 1/32 and 1/64 levels; a head whose fmap_border disagrees with the padding moves it
    elsewhere (the depth check refuses that)."""
    from mmseg_gate.engine.depth_checks import check_depth_head
    torch.manual_seed(0)  # the head's random initialisation
    model = depth_model(tiny).eval()
    with torch.no_grad():
        feats = model.backbone(smooth_image(96, 96))  # 96 -> grid of 128: 4 cells at 1/32, the last one padding
    # (level, cell, the 1/32 block of the 96x96 map under it): 1/32 cells (2, 2) and (0, 1) are pixels 64..95 and
    # (0..31, 32..63); 1/8 cell (9, 9) is pixels 72..79; 1/64 cell (1, 1) is pixels 64..127 (64..95 real)
    for level, cell, block in ((2, (2, 2), (2, 2)), (2, (0, 1), (0, 1)), (0, (9, 9), (2, 2)), (3, (1, 1), (2, 2))):
        rel = _blocks(model, feats, level, cell)
        others = rel.clone()
        others[block] = 0
        assert rel[block] == 1 and others.max() < 0.5, (level, cell, rel)
    check_depth_head(model)
    # the same features read by a head that keeps the padding row and column: the response lands a cell up-left
    model.decode_head.fmap_border = (0, 0)
    rel = _blocks(model, feats, 2, (2, 2))
    assert rel[2, 2] < 0.9 and rel[1, 1] == 1, rel
    with pytest.raises(ValueError, match=re.escape('model.decode_head.fmap_border=(0, 0) but model.backbone.pyramid '
                                                   'fmap_border=(1, 1)')):
        check_depth_head(model)


def test_without_the_pyramid_a_depth_head_is_refused_with_the_fix(tiny):
    """The old geometry (levels cropped to ceil(H/s)): 128 crops with fmap_border (1, 1) would train silently with
    a real row and column of features dropped; GATECheckHook's depth check refuses it before the first iteration."""
    from mmseg_gate.engine.depth_checks import check_depth_head
    model = depth_model(tiny, pyramid=None)
    feats = model.backbone(smooth_image(128, 128))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]  # shapes fit the head: nothing would fail
    assert model.decode_head(feats).shape[-1] == 96  # but it keeps 3 of the 4 real 1/32 cells
    with pytest.raises(ValueError, match=r"model.backbone.pyramid is not set.*Set model.backbone.pyramid=dict\(type='vpd', "
                                         r'fmap_border=\(1, 1\)\)'):
        check_depth_head(model)


def test_depth_head_check_names_the_values_to_set(tiny, registered):
    from mmseg.registry import MODELS
    from mmseg_gate.engine.depth_checks import check_depth_config, check_depth_head
    cfg = Config.fromfile(config('demo/gate_tiny_depth_nyu.py'))
    cfg.model.backbone.update(pretrained=str(tiny / 'sd'), branches=[dict(name='plain')], amalgamation=None)
    cfg.model.decode_head.update(in_channels=[32, 64, 64, 32], embed_dim=16, feature_dim=64)
    with pytest.raises(ValueError, match=re.escape('model.decode_head.feature_dim=64 but embed_dim=16: the decoder '
                                                   'takes 8 * embed_dim = 128 channels. Set model.decode_head.feature_dim=128.')):
        check_depth_config(cfg)
    model = MODELS.build(cfg.model)
    with pytest.raises(ValueError, match=re.escape('Set model.decode_head.in_channels=[32, 64, 64, 64].')):
        check_depth_head(model)
    swap = Config.fromfile(config('depth/swap_vpd_sd_nyu.py'))  # VPD's SD1.5 channels, the tiny UNet's folder
    swap.model.backbone.pretrained = str(tiny / 'sd')
    with pytest.raises(ValueError, match=re.escape('Set model.decode_head.in_channels=[32, 64, 64, 64].')):
        check_depth_config(swap)  # before the build: from the folder's unet/config.json
    cfg.model.test_cfg.mode = 'slide'
    cfg.test_evaluator.depth_metrics = ['rmse']
    with pytest.raises(ValueError, match="(?s)mode='slide': mmseg 1.2.2's DepthEstimator then runs whole-image.*"
                                         r"test_evaluator.depth_metrics=\['rmse'\]: mmseg 1.2.2's DepthMetric rejects"):
        check_depth_config(cfg)


# --------------------------------------------------------------------------------------------- mmseg's defects
def test_mmseg_depth_defects_our_configs_avoid(tiny, registered):
    """mmseg 1.2.2: test mode 'slide' ends in whole-image inference; DepthMetric rejects depth_metrics lists;
    RandomDepthMix paints millimetres modulo 256 into the image. Our configs' slide_flip runs the windows it says."""
    from unittest import mock

    from mmseg.datasets.transforms import RandomDepthMix
    from mmseg.evaluation import DepthMetric
    model = depth_model(tiny).eval()
    img = smooth_image(96, 128)
    calls = []
    real = model.encode_decode
    with mock.patch.object(model, 'encode_decode', side_effect=lambda x, m: calls.append(tuple(x.shape[-2:])) or real(x, m)):
        model.predict(img, None)
    assert calls == [(96, 96)] * 4  # slide_flip, crop 96 stride 32 over 128 columns: 2 windows and their flips
    model.test_cfg.mode = 'slide'  # mmseg runs the windows, then whole-image inference over them
    with mock.patch.object(model, 'slide_inference', wraps=model.slide_inference) as slide, \
            pytest.raises(ValueError, match=r'input 96x128 .* drop 1 real column'):  # the pyramid refuses it
        model.inference(img, metas(96, 128))
    assert slide.called
    with pytest.raises(TypeError, match='isinstance'):
        DepthMetric(depth_metrics=['rmse'])
    depth_mm = np.full((4, 4), 2500, np.float32)
    results = RandomDepthMix(prob=1.0)(dict(img=np.zeros((4, 4, 3), np.uint8), img_shape=(4, 4),
                                            gt_depth_map=depth_mm * 1e-3, depth_rescale_factor=1e-3))
    assert set(np.unique(results['img'])) <= {0, 2500 % 256}


# --------------------------------------------------------------------------------------------- per-scene prompts
def test_scene_prompts_select_per_image_and_equal_a_fixed_prompt_branch(tiny):
    from mmseg_gate.models.pyramid import VPD_TAPS
    common = dict(taps=VPD_TAPS, pyramid='vpd', amalgamation=None, branches=[dict(name='b')])
    scenes = build(backbone_cfg(tiny, prompt='a photo of a {}', prompt_classes=('bathroom', 'living_room'),
                                **common)).eval()
    fixed = [build(backbone_cfg(tiny, prompt=f'a photo of a {n}', **common)).eval() for n in ('bathroom', 'living room')]
    assert scenes.class_embed_select and not fixed[0].class_embed_select
    img = torch.cat([smooth_image(96, 96, 0), smooth_image(96, 96, 1)])
    with torch.no_grad():
        out = scenes((img, torch.tensor([1, 0])))
        want = [fixed[1](img), fixed[0](img)]  # the same batch: the same computation but for the text
        for level in range(4):
            torch.testing.assert_close(out[level][:1], want[0][level][:1])
            torch.testing.assert_close(out[level][1:], want[1][level][1:])
        mean, unknown = scenes(img), scenes((img, torch.tensor([-1, -1])))  # no ids / an unknown scene: the mean
        for level in range(4):
            torch.testing.assert_close(mean[level], unknown[level])
        assert not torch.allclose(mean[0], want[0][0]) and not torch.allclose(mean[0], want[1][0])
    with pytest.raises(ValueError, match=re.escape('class ids [2] are outside [-1, 2)')):
        scenes((img, torch.tensor([2, 0])))
    with pytest.raises(ValueError, match='no branch prompt has {} for them'):
        build(backbone_cfg(tiny, prompt='a photo', prompt_classes='NYUDataset', **common))
    with pytest.raises(ValueError, match='exactly one empty {}'):
        build(backbone_cfg(tiny, prompt='a {} and a {}', prompt_classes='NYUDataset', **common))
    with pytest.raises(ValueError, match='class ids were given but no branch prompt is a per-scene template'):
        fixed[0]((img, torch.tensor([0, 1])))


def test_depth_estimator_hands_nyu_scene_ids_to_scene_prompts(tiny, registered, tmp_path):
    """NYUDataset reads the scene from the file name, the config's PackSegInputs keeps it, DepthEstimator passes it:
    each image's features are those of its scene's prompt."""
    from mmseg.registry import DATASETS
    from mmseg_gate.testing.synthetic_nyu import make_nyu_like
    cfg = Config.fromfile(config('demo/gate_tiny_depth_scenes_nyu.py'))
    ds_cfg = cfg.train_dataloader.dataset
    ds_cfg.update(data_root=str(make_nyu_like(tmp_path, num_train=3, num_test=0)))
    dataset = DATASETS.build(ds_cfg)
    classes = dataset.metainfo['classes']
    samples = [dataset[i] for i in range(3)]
    ids = [s['data_samples'].metainfo['category_id'] for s in samples]
    names = [Path(s['data_samples'].img_path).name for s in samples]
    assert ids == [-1 if n.startswith('corridor') else classes.index(n[:n.index(next(filter(str.isdigit, n))) - 1])
                   for n in names] and -1 in ids and any(i >= 0 for i in ids)
    model = depth_model(tiny, 'demo/gate_tiny_depth_scenes_nyu.py').eval()
    assert model.backbone.class_embed_select
    data = model.data_preprocessor(dict(inputs=[s['inputs'] for s in samples],
                                        data_samples=[s['data_samples'] for s in samples]), training=True)
    batch_metas = [s.metainfo for s in data['data_samples']]
    with torch.no_grad():
        feats = model.extract_feat(data['inputs'], batch_metas)
        want = model.backbone((data['inputs'], torch.tensor(ids)))
    for f, w in zip(feats, want):
        torch.testing.assert_close(f, w)


# --------------------------------------------------------------------------------------------------- e2e
@pytest.fixture(scope='module')
def nyu_workspace(tiny, tmp_path_factory):
    from mmseg_gate.testing.synthetic_nyu import make_nyu_like
    ws = tmp_path_factory.mktemp('nyu_ws')
    (ws / 'data').mkdir()
    (ws / 'data' / 'tiny_sd').symlink_to(tiny)
    make_nyu_like(ws / 'data' / 'demo', num_train=6, num_test=2)
    return ws


def depth_metrics(out):
    found = re.findall(r'd1: ([\d.]+).*abs_rel: ([\d.]+).*rmse: ([\d.]+)', out)
    assert found, out[-3000:]
    return dict(zip(('d1', 'abs_rel', 'rmse'), map(float, found[-1])))


@pytest.mark.e2e
def test_tiny_depth_demo_trains_and_tests(nyu_workspace):
    """configs/demo/gate_tiny_depth_nyu.py through tools/train.py then tools/test.py: the metrics are printed, the
    test of the checkpoint repeats the validation, and --out writes millimetre PNGs at NYU's size."""
    import cv2
    ws, wd = nyu_workspace, nyu_workspace / 'work_dirs' / 'depth'
    short = ['train_cfg.max_iters=4', 'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4',
             'param_scheduler.0.end=4']
    _, out = run(ws, sys.executable, tool('train.py'), config('demo/gate_tiny_depth_nyu.py'), '--work-dir', str(wd),
                 '--cfg-options', *short)
    val = depth_metrics(out)
    assert 0 <= val['d1'] <= 1 and 0 < val['abs_rel'] < 10 and 0 < val['rmse'] < 10
    _, out = run(ws, sys.executable, tool('test.py'), config('demo/gate_tiny_depth_nyu.py'), str(wd / 'iter_4.pth'),
                 '--work-dir', str(wd / 'test'), '--out', str(wd / 'pred'))
    assert depth_metrics(out) == pytest.approx(val, abs=1e-4)
    pngs = sorted((wd / 'pred').glob('*.png'))
    assert len(pngs) == 2
    pred = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert pred.dtype == np.uint16 and pred.shape == (480, 640) and 100 < np.median(pred) < 10000  # millimetres


@pytest.mark.e2e
def test_swap_of_mmseg_vpd_config_trains_with_mmseg_own_train_tool(nyu_workspace):
    """configs/depth/swap_vpd_sd_nyu.py (mmseg's VPD config, the backbone swapped) through mmseg's own tools/train.py:
    VPD's 480 crops, Albu, slide_flip test and DepthMetric unchanged; the options only shrink the run."""
    import mmseg
    ws = nyu_workspace
    root = 'data/demo/nyu'
    options = {'model.backbone.pretrained': str(ws / 'data/tiny_sd/sd'), 'model.backbone.dtype': 'fp32',
               'model.decode_head.in_channels': '[32,64,64,64]',  # the tiny UNet's (SD1.5: VPD's [320,640,1280,1280])
               **{f'{s}_dataloader.dataset.data_root': root for s in ('train', 'val', 'test')},
               'train_dataloader.batch_size': 1, 'train_dataloader.num_workers': 0,
               'train_dataloader.persistent_workers': False, 'val_dataloader.num_workers': 0,
               'val_dataloader.persistent_workers': False, 'val_dataloader.dataset.indices': 1,
               'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2}
    mmseg_train = Path(mmseg.__file__).parent / '.mim' / 'tools' / 'train.py'
    _, out = run(ws, sys.executable, str(mmseg_train), config('depth/swap_vpd_sd_nyu.py'),
                 '--work-dir', str(ws / 'work_dirs' / 'swap'), '--cfg-options', *(f'{k}={v}' for k, v in options.items()))
    metrics = depth_metrics(out)
    assert 0 <= metrics['d1'] <= 1 and 0 < metrics['rmse'] < 10  # two steps from a random head: any δ1
    assert (ws / 'work_dirs' / 'swap' / 'iter_2.pth').exists()
