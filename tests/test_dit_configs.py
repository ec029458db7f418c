"""The diffusion-transformer configs (configs/dit/, their tiny demo twins): every one parses, the demo models
build on the tiny DiT assets with heads that take what the MultiLevelNeck gives, and the tiny FLUX demo trains
and validates through tools/train.py (the GATECheckHook's channel check included)."""
import sys

import pytest
from mmengine.config import Config

from test_tools_e2e import REPO, SHORT, config, miou, run, tool

DIT = sorted((REPO / 'configs' / 'dit').glob('*.py'))
DEMOS = sorted(p for p in (REPO / 'configs' / 'demo').glob('*.py') if any(k in p.name for k in ('sd3', 'pixart', 'flux')))


def test_dit_configs_parse_and_their_necks_fit_their_heads():
    assert [p.name for p in DIT] == ['gate_flux1_dev_ade20k.py', 'gate_flux1_schnell_ade20k.py',
                                     'gate_pixart_sigma_ade20k.py', 'gate_sd35_medium_ade20k.py']
    assert [p.name for p in DEMOS] == ['gate_tiny_flux_ade20k.py', 'gate_tiny_pixart_ade20k.py',
                                       'gate_tiny_sd3_ade20k.py']
    for path in DIT + DEMOS:
        model = Config.fromfile(str(path)).model
        neck, head, aux = model.neck, model.decode_head, model.auxiliary_head
        assert neck.type == 'MultiLevelNeck' and len(neck.in_channels) == len(model.backbone.taps) == 4, path
        assert head.in_channels == [neck.out_channels] * len(neck.scales) and aux.in_channels == neck.out_channels
        assert all(t.startswith(('transformer_blocks.', 'single_transformer_blocks.')) for t in model.backbone.taps)
        if path in DIT:
            assert model.backbone.timestep == 50


@pytest.mark.parametrize('demo', ['pixart', 'sd3'])
def test_dit_demo_models_build_and_their_channels_agree(tiny_dit, demo):
    """The tiny PixArt and SD3 demos' segmentors on the tiny assets (the FLUX demo's trains below)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    import mmseg_gate  # noqa: F401
    from mmseg_gate.engine.checks import check_head_channels
    register_all_modules()  # mmseg's default scope: the data preprocessor, the neck and the heads
    cfg = Config.fromfile(config(f'demo/gate_tiny_{demo}_ade20k.py'))
    model = cfg.model
    if demo == 'pixart':
        model.backbone.pretrained = str(tiny_dit / 'pixart-sigma')
    else:  # data/tiny_sd/... -> the tiny assets
        model.backbone.pretrained = str(tiny_dit / 'sd3')
        for branch in model.backbone.branches:
            for x in (*branch.get('loras', ()), *branch.get('controlnets', ())):
                x.path = str(tiny_dit / x.path.split('data/tiny_sd/')[1])
    segmentor = MODELS.build(model)
    backbone = segmentor.backbone
    assert backbone.out_channels == model.neck.in_channels == [16] * 4
    assert backbone.strides == [16] * 4  # every DiT tap on the 1/16 grid
    assert len(backbone.branch_groups) == 1  # one batched call
    if demo == 'pixart':
        assert backbone.timesteps == [50, 150, 300]
    check_head_channels(segmentor)
    model.neck.in_channels = [8] * 4
    with pytest.raises(ValueError, match=r'Set model.neck.in_channels=\[16, 16, 16, 16\]'):
        check_head_channels(MODELS.build(model))


@pytest.fixture(scope='module')
def dit_workspace(tiny_dit, tmp_path_factory):
    """data/tiny_sd -> the tiny DiT assets (sd3/, sd3-controlnet/, ...), one synthetic ADE20K validation image."""
    from mmseg_gate.testing.synthetic_data import make_ade20k_like
    ws = tmp_path_factory.mktemp('dit_ws')
    (ws / 'data').mkdir()
    (ws / 'data' / 'tiny_sd').symlink_to(tiny_dit)
    make_ade20k_like(ws / 'data' / 'demo', num_train=4, num_val=1)
    return ws


@pytest.mark.e2e
def test_tiny_flux_demo_trains_and_validates(dit_workspace):
    """configs/demo/gate_tiny_flux_ade20k.py through tools/train.py: the paper's three branches on FLUX (LoRAs in
    diffusers and kohya format as mixed-adapter batches, the FLUX ControlNet), four 1/16 taps of double- and
    single-stream blocks, MultiLevelNeck, UPerHead; small checkpoint."""
    wd = dit_workspace / 'work_dirs' / 'flux'
    _, out = run(dit_workspace, sys.executable, tool('train.py'), config('demo/gate_tiny_flux_ade20k.py'),
                 '--work-dir', str(wd), '--cfg-options', *SHORT)
    assert 0 <= miou(out) <= 100
    from mmseg_gate.checkpoint_compat import load_runner_checkpoint
    ckpt = load_runner_checkpoint(str(wd / 'iter_2.pth'), map_location='cpu')
    frozen = ckpt['meta']['gate_frozen']
    assert frozen['pretrained'].endswith('flux') and frozen['family'] == 'flux' and len(frozen['controlnets']) == 1
    assert any(k.startswith('neck.') for k in ckpt['state_dict'])
    assert not any('transformer' in k or 'text_encoder' in k or 'controlnet' in k for k in ckpt['state_dict'])
