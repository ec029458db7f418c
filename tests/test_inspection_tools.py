"""tools/gate_guideline.py, tools/visualize_features.py, tools/caption.py and per-image prompts."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import backbone_cfg, build, gate_branches

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))


@pytest.fixture(scope='module')
def pictures(tmp_path_factory):
    from mmseg_gate.testing.synthetic_data import make_ade20k_like
    root = make_ade20k_like(tmp_path_factory.mktemp('pics'), num_train=2, num_val=2, size=(64, 64))
    return root / 'images' / 'training'


def guideline_args(tiny, pictures, out, technique, reference='{}'):
    return argparse.Namespace(sd=str(tiny / 'sd'), images=[str(pictures)], technique=technique, reference=reference,
                              strength=0.9, num_steps=10, guidance=7.5, seed=0, size=64, timestep=50,
                              lpips_weights=None, max_images=None, out=str(out), device='cpu', dtype='fp32')


def test_guideline_judges_a_technique_that_keeps_the_input_closer(tiny, pictures, tmp_path):
    from gate_guideline import run
    keep = run(guideline_args(tiny, pictures, tmp_path / 'keep', '{"strength": 0.1}'))
    assert keep['verdict'] == 'suppresses content shift' and keep['closer_on'] == 2
    # the check can fail: a technique that shifts content more than the reference is judged so
    worse = run(guideline_args(tiny, pictures, tmp_path / 'worse', '{"strength": 0.9}', '{"strength": 0.2}'))
    assert worse['verdict'] == 'increases content shift' and worse['closer_on'] == 0
    out = tmp_path / 'keep'
    assert sorted(p.name for p in out.glob('grid_*.png')) == ['grid_ADE_train_00000001.png', 'grid_ADE_train_00000002.png']
    assert (out / 'scores.csv').read_text().count('\n') == 3
    assert set(json.loads((out / 'scores.json').read_text())['rows'][0]) >= {
        'reference_psnr', 'reference_ssim', 'technique_psnr', 'technique_ssim', 'feature_score'}


def test_guideline_says_no_measurable_difference_for_the_reference_itself(tiny, pictures, tmp_path):
    """A technique identical to the reference must not be called a suppressor (or the opposite)."""
    from gate_guideline import run
    same = run(guideline_args(tiny, pictures, tmp_path, '{}'))
    assert same['verdict'] == 'no measurable difference' and same['agree']
    assert all(r['reference_seed2_psnr'] != r['reference_psnr'] for r in same['rows'])  # the spread is measured


def test_guideline_verdict_weighs_effects_against_the_seed_spread():
    from mmseg_gate.guideline import effect, verdict
    # the reported case: 0.06 dB closer while two seeds differ by 0.5 dB, and a negative feature score
    small = verdict(effect([0.06, 0.05, 0.07], [0.5, -0.4, 0.6]), effect([-0.365] * 3, [0.05, -0.04, 0.06]))
    assert small['verdict'] == 'no measurable difference' and not small['agree']
    assert 'disagrees: increases content shift' in small['text']
    clear = verdict(effect([2.0, 2.5, 1.8], [0.3, -0.2, 0.4]), effect([0.2, 0.3, 0.25], [0.01, -0.02, 0.01]))
    assert clear['verdict'] == 'suppresses content shift' and clear['agree']
    noisy = verdict(effect([3.0, -2.0, 0.5], [0.1, -0.1, 0.1]), effect([0.0] * 3, [0.0] * 3))
    assert noisy['verdict'] == 'no measurable difference'  # within twice the standard error


def test_guideline_with_lora_and_controlnet(tiny, pictures, tmp_path):
    from gate_guideline import run
    technique = json.dumps({'prompt': 'a photo', 'loras': [{'path': str(tiny / 'lora' / 'b.safetensors')}],
                            'controlnets': [{'path': str(tiny / 'controlnet-canny'), 'condition': 'canny'}]})
    result = run(guideline_args(tiny, pictures, tmp_path, technique))
    assert all(r['feature_score'] != 0 for r in result['rows'])  # the technique changes the features
    assert all(r['technique_psnr'] != r['reference_psnr'] for r in result['rows'])


def test_guideline_with_ip_adapter_and_denoising(tiny, pictures, tmp_path):
    from gate_guideline import run
    technique = json.dumps({'ip_adapters': [{'path': str(tiny / 'ip-adapter' / 'ip-adapter_tiny.safetensors'),
                                             'image_encoder': str(tiny / 'ip-adapter' / 'image_encoder')}],
                            'denoising_from': 60})
    result = run(guideline_args(tiny, pictures, tmp_path, technique, '{"strength": 0.9}'))
    assert all(r['technique_psnr'] != r['reference_psnr'] for r in result['rows'])  # the image prompt acted
    assert all(r['feature_score'] != 0 for r in result['rows'])


def test_feature_pictures_differ_between_branches(tiny, image, tmp_path):
    from visualize_features import feature_pictures, save_grid
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    from test_segmentor import segmentor_cfg
    register_all_modules()
    model = MODELS.build(ConfigDict(segmentor_cfg(tiny))).eval()
    pics = feature_pictures(model, image)
    assert pics['branches'] == ['basic', 'lora_a_canny', 'lora_b_canny']
    for level in pics['levels']:
        a, b, c = level['branch_pictures']
        assert a.shape[-1] == 3 and 0 <= a.min() and a.max() <= 1
        assert abs(a - b).mean() > 1e-3 and abs(b - c).mean() > 1e-3
        assert len(level['branch_weights']) == 3 and sum(level['branch_weights']) == pytest.approx(1, abs=1e-4)
    rgb = ((image[0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()
    save_grid(rgb, pics, tmp_path / 'grid.png')
    assert (tmp_path / 'grid.png').stat().st_size > 1000


@pytest.mark.e2e
def test_visualize_features_cli(tiny, pictures, tmp_path):
    opts = [f'sd_path={tiny}/sd', f'controlnet_path={tiny}/controlnet-canny', f'lora_a={tiny}/lora/a.safetensors',
            f'lora_b={tiny}/lora/b.safetensors']
    subprocess.run([sys.executable, str(REPO / 'tools' / 'visualize_features.py'),
                    str(REPO / 'configs' / 'demo' / 'gate_tiny_ade20k.py'), '--images', str(pictures),
                    '--out', str(tmp_path), '--device', 'cpu', '--cfg-options', *opts], check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.glob('*.png')) == ['ADE_train_00000001_features.png',
                                                               'ADE_train_00000002_features.png']


@pytest.mark.e2e
def test_caption_tool_is_resumable(tmp_path, pictures):
    from mmseg_gate.testing import make_tiny_captioner
    model = make_tiny_captioner(tmp_path / 'blip')
    root = pictures.parents[1]
    out = tmp_path / 'captions.json'
    cmd = [sys.executable, str(REPO / 'tools' / 'caption.py'), '--model', str(model), '--data-root', str(root),
           '--images', 'images', '--out', str(out), '--batch-size', '3', '--max-new-tokens', '5']
    first = subprocess.run(cmd, check=True, capture_output=True, text=True)
    captions = json.loads(out.read_text())
    assert sorted(captions) == ['images/testing/ADE_test_00000001.jpg', 'images/testing/ADE_test_00000002.jpg',
                                'images/training/ADE_train_00000001.jpg', 'images/training/ADE_train_00000002.jpg',
                                'images/validation/ADE_val_00000001.jpg', 'images/validation/ADE_val_00000002.jpg']
    assert all(isinstance(c, str) and c for c in captions.values())
    assert '6 to go' in first.stdout
    again = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert '6 already captioned, 0 to go' in again.stdout


def test_per_image_prompts_change_features_like_a_fixed_prompt(tiny, image):
    per_image = build(backbone_cfg(tiny, keep_text_encoder=True, branches=gate_branches(tiny)))
    batch = torch.cat([image, image])
    default = per_image.extract(batch)
    per_image.set_prompts(['a red street', None])
    captioned = per_image.extract(batch)
    per_image.set_prompts(None)
    fixed = build(backbone_cfg(tiny, prompt='a red street', branches=gate_branches(tiny))).extract(image)
    for level in range(3):
        for b in range(3):
            torch.testing.assert_close(captioned[level][b][:1], fixed[level][b], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(captioned[level][b][1:], default[level][b][1:], atol=1e-5, rtol=1e-4)
            assert not torch.allclose(captioned[level][b][:1], default[level][b][:1])


def test_per_image_prompts_need_the_text_encoder(tiny):
    m = build(backbone_cfg(tiny))
    with pytest.raises(RuntimeError, match='keep_text_encoder=True'):
        m.set_prompts(['x'])
