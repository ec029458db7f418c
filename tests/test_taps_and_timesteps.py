"""Taps anywhere (tokens, chunked feed-forwards, merged strides), tools/list_taps.py, per-branch
timesteps in one batched call, clean features (noise='none'), unet= overrides, SD2 v-prediction."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import backbone_cfg, build, lora
from test_features_match_diffusers import crop, padded, reference_features

REPO = Path(__file__).resolve().parents[1]


def hooked_outputs(tiny, image, names, t=50, clean=False):
    """diffusers' full SD1.5 UNet forward (no technique) and the outputs of ``names``."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny / 'sd'), safety_checker=None)
    with torch.no_grad():
        emb = pipe.encode_prompt('a photo', 'cpu', 1, False)[0]
        latents = pipe.vae.encode(image).latent_dist.mode() * pipe.vae.config.scaling_factor
        noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(0))
        noisy = latents if clean else pipe.scheduler.add_noise(latents, noise, torch.tensor([t]))
        modules = dict(pipe.unet.named_modules())
        out = {}
        hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: out.__setitem__(n, o)) for n in names]
        pipe.unet(noisy, t, encoder_hidden_states=emb)
        for hook in hooks:
            hook.remove()
    return [out[n] for n in names]


def test_token_taps_of_a_chunked_feed_forward_and_merged_strides(tiny):
    """At 256x320 the 1/8 transformer sees 1280 tokens: its feed-forward would run in chunks, and a
    hook on it would fire per chunk; a tapped feed-forward runs whole."""
    image = torch.rand(1, 3, 256, 320) * 2 - 1
    taps = ('up_blocks.3.attentions.0.transformer_blocks.0.ff', 'up_blocks.3.resnets.0',
            'up_blocks.2.attentions.0.transformer_blocks.0.attn1')
    m = build(backbone_cfg(tiny, taps=taps, merge_same_stride=True, amalgamation=None))
    assert m.strides == [8, 16] and m.out_channels == [32 + 32, 64]
    ours = m.extract(image)
    ff, res, attn = hooked_outputs(tiny, image, taps)
    assert ff.shape == (1, 32 * 40, 32)
    expected = torch.cat([ff.transpose(1, 2).reshape(1, 32, 32, 40), res], 1)
    torch.testing.assert_close(ours[0][0], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours[1][0], attn.transpose(1, 2).reshape(1, 64, 16, 20), atol=1e-5, rtol=1e-4)


def test_a_tap_that_gives_no_feature_map_is_refused(tiny):
    with pytest.raises(ValueError, match='time_embedding.*list_taps.py'):
        build(backbone_cfg(tiny, taps=('time_embedding',), amalgamation=None))


def test_list_taps_lists_what_the_backbone_accepts(tiny):
    out = subprocess.run([sys.executable, 'tools/list_taps.py', str(tiny / 'sdxl'), '--size', '64', '96',
                          '--grep', 'up_blocks.0.attentions.1'], cwd=REPO, capture_output=True, text=True,
                         check=True, env={'HF_HUB_OFFLINE': '1', 'PATH': ''}).stdout
    rows = [line.split() for line in out.splitlines()[1:-1]]
    listed = {r[0]: (r[1], int(r[2]), int(r[3].split('/')[1])) for r in rows}
    block = 'up_blocks.0.attentions.1.transformer_blocks.1'
    assert listed[block] == ('tokens', 64, 32) and listed['up_blocks.0.attentions.1'] == ('map', 64, 32)
    assert not any(name.endswith(('attn2.to_k', 'attn2.to_v')) for name in listed)  # 77 text tokens
    m = build(backbone_cfg(tiny, pretrained=str(tiny / 'sdxl'), taps=(block, f'{block}.attn2.to_q'),
                           amalgamation=None))
    assert [(t.tokens, t.channels, t.stride) for t in m.tap_info] == [(True, 64, 32)] * 2


def test_per_branch_timesteps_in_one_call_equal_separate_models(tiny, image):
    both = build(backbone_cfg(tiny, branches=[dict(name='t50'), dict(name='t300', timestep=300, loras=[lora(tiny, 'a')])]))
    assert both.branch_groups == [[0, 1]]  # one batched UNet call
    ours = both.extract(image)
    t50 = build(backbone_cfg(tiny, amalgamation=None)).extract(image)
    t300 = build(backbone_cfg(tiny, timestep=300, amalgamation=None,
                              branches=[dict(name='x', loras=[lora(tiny, 'a')])])).extract(image)
    for level in range(3):
        torch.testing.assert_close(ours[level][0], t50[level][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours[level][1], t300[level][0], atol=1e-5, rtol=1e-4)
    assert (t50[0][0] - t300[0][0]).abs().max() > 1e-2


def test_clean_features_equal_the_clean_latents_forward(tiny, image):
    ours = build(backbone_cfg(tiny, noise='none', timestep=0, amalgamation=None)).extract(image)
    ref = crop(reference_features(tiny, padded(image), None, t=0, clean=True), image)
    for level, r in enumerate(ref):
        torch.testing.assert_close(ours[level][0], r, atol=1e-5, rtol=1e-4)
    noisy = build(backbone_cfg(tiny, timestep=0, amalgamation=None)).extract(image)
    assert not torch.allclose(ours[0][0], noisy[0][0])  # t=0 still adds a little noise


@pytest.mark.parametrize('layout', ['unet_folder', 'pipeline_folder'])
def test_unet_override_loads_the_other_unet(tiny, image, tmp_path, layout):
    other = tmp_path / 'tuned'
    shutil.copytree(tiny / 'sd', other)
    weights = other / 'unet' / 'diffusion_pytorch_model.safetensors'
    state = load_file(weights)
    state['conv_in.weight'] = state['conv_in.weight'] * 1.5
    save_file(state, weights)
    path = other / 'unet' if layout == 'unet_folder' else other
    tuned = build(backbone_cfg(tiny, unet=str(path), amalgamation=None)).extract(image)
    ref = crop(reference_features(tiny, padded(image), None, unet=other / 'unet'), image)
    for level, r in enumerate(ref):
        torch.testing.assert_close(tuned[level][0], r, atol=1e-5, rtol=1e-4)
    base = build(backbone_cfg(tiny, amalgamation=None)).extract(image)
    assert (tuned[0][0] - base[0][0]).abs().max() > 1e-2


def test_unet_override_for_another_base_model_is_refused(tiny):
    with pytest.raises(ValueError, match='text states of width 64.*give 32'):
        build(backbone_cfg(tiny, unet=str(tiny / 'sd2'), amalgamation=None))


def test_sd2_v_prediction_features_equal_diffusers(tiny, image):
    """The noising does not depend on the prediction type: SD2-768's v-prediction model as any other."""
    assert json.loads((tiny / 'sd2v' / 'scheduler' / 'scheduler_config.json').read_text())['prediction_type'] \
        == 'v_prediction'
    ours = build(backbone_cfg(tiny, pretrained=str(tiny / 'sd2v'), amalgamation=None)).extract(image)
    ref = crop(reference_features(tiny, padded(image), None, sd=tiny / 'sd2v'), image)
    for level, r in enumerate(ref):  # float32 noise of the wider SD2 shapes: 2e-5
        torch.testing.assert_close(ours[level][0], r, atol=1e-4, rtol=1e-3)
