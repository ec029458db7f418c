"""SDXL: each branch equals diffusers' own SDXL computation (two text encoders, pooled embedding and
time ids, LoRA in diffusers and kohya formats on the UNet and both text encoders, an SDXL ControlNet),
with token taps on a non-square input. The comparisons are marked ``device`` (docs/gpu.md)."""
import cv2
import numpy as np
import pytest
import torch

from conftest import assert_features_close, backbone_cfg, build

# maps and tokens at three strides, given out of order: 1/16 map, 1/8 map, 1/32 tokens, 1/16 tokens
TAPS = ('up_blocks.0.upsamplers.0', 'up_blocks.1.upsamplers.0', 'up_blocks.0.attentions.0.transformer_blocks.1',
        'up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q')
STRIDES = {TAPS[0]: 16, TAPS[1]: 8, TAPS[2]: 32, TAPS[3]: 16}
LEVELS = [TAPS[1], TAPS[0], TAPS[3], TAPS[2]]  # sorted by stride, given order within one


def sdxl_reference(tiny, image, image_uint8, lora=None, controlnet=False, t=50, device='cpu'):
    """diffusers' SDXL pieces, full UNet forward, tap outputs from hooks laid on their grids by hand (fp32 on
    ``device``; the seeded noise drawn on the CPU and moved)."""
    from diffusers import ControlNetModel, DDPMScheduler, StableDiffusionXLPipeline
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny / 'sdxl'))
    if lora:
        pipe.load_lora_weights(lora)
        pipe.fuse_lora()
    pipe.to(device)
    h, w = image.shape[-2:]
    with torch.no_grad():
        emb, _, pooled, _ = pipe.encode_prompt('a photo', device=device, num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)
        time_ids = pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=emb.dtype,
                                          text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        added = dict(text_embeds=pooled, time_ids=time_ids.to(device))
        latents = pipe.vae.encode(image.to(device)).latent_dist.mode() * pipe.vae.config.scaling_factor
        noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(0)).to(device)
        # Euler's x + sigma * n, scaled by scale_model_input, is DDPM's noising: the same betas
        noisy = DDPMScheduler.from_config(pipe.scheduler.config).add_noise(latents, noise, torch.tensor([t]))
        kwargs = {}
        if controlnet:
            net = ControlNetModel.from_pretrained(str(tiny / 'sdxl-controlnet')).to(device)
            edges = cv2.Canny(image_uint8, 100, 200)
            cond = torch.from_numpy(np.stack([edges] * 3, 0))[None].float().to(device) / 255
            down, mid = net(noisy, t, encoder_hidden_states=emb, controlnet_cond=cond, added_cond_kwargs=added,
                            return_dict=False)
            kwargs = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        modules = dict(pipe.unet.named_modules())
        out = {}
        hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: out.__setitem__(n, o)) for n in TAPS]
        pipe.unet(noisy, t, encoder_hidden_states=emb, added_cond_kwargs=added, **kwargs)
        for hook in hooks:
            hook.remove()
    return on_grids(out, h, w)


def on_grids(out, h, w):
    """The hooked tap outputs in LEVELS order, tokens laid on their grids by hand."""
    maps = []
    for name in LEVELS:
        o, s = out[name], STRIDES[name]
        if o.ndim == 3:  # tokens [B, h*w, C], row-major over the grid
            o = o.permute(0, 2, 1).reshape(1, o.shape[-1], h // s, w // s)
        maps.append(o)
    return maps


@pytest.fixture(scope='module')
def sdxl(tiny, device, dtype):
    lora = {k: str(tiny / 'sdxl-lora' / f'{k}.safetensors') for k in 'ab'}
    net = dict(path=str(tiny / 'sdxl-controlnet'), condition='canny')
    return build(backbone_cfg(tiny, pretrained=str(tiny / 'sdxl'), taps=TAPS, dtype=dtype, branches=[
        dict(name='basic'), dict(name='lora_a', loras=[dict(path=lora['a'])]),
        dict(name='lora_b_canny', loras=[dict(path=lora['b'])], controlnets=[net]),
        dict(name='canny', controlnets=[net])])).to(device)


def test_sdxl_is_detected_and_levels_are_sorted(sdxl):
    assert sdxl.frozen_modules().family.name == 'sdxl'
    assert sdxl.strides == [8, 16, 16, 32]
    assert [sdxl.taps[level[0]] for level in sdxl.levels] == LEVELS
    assert sdxl.out_channels  # the amalgamation's


@pytest.mark.device
@pytest.mark.parametrize('branch, lora, controlnet', [(0, None, False), (1, 'a', False), (2, 'b', True),
                                                      (3, None, True)])
def test_sdxl_branch_equals_diffusers(tiny, image, image_uint8, sdxl, branch, lora, controlnet, device, dtype):
    assert image.shape[-2:] == (64, 96)  # non-square, a multiple of the tiny SDXL's 32: no padding
    ours = sdxl.extract(image.to(device))
    ref = sdxl_reference(tiny, image, image_uint8, lora and str(tiny / 'sdxl-lora' / f'{lora}.safetensors'),
                         controlnet, device=device)
    for level, r in enumerate(ref):
        assert ours[level][branch].shape == r.shape
        assert_features_close(ours[level][branch], r, dtype, atol=1e-4, rtol=1e-3)
    if branch:  # the technique changed the features: the comparison could fail
        assert (ours[0][branch] - ours[0][0]).abs().max() > 1e-3


def test_sdxl_lora_reaches_both_text_encoders(sdxl):
    targets = sdxl.adapters.targets
    assert targets['a'] == dict(text_encoder=False, text_encoder_2=True, unet=True)
    assert targets['b'] == dict(text_encoder=True, text_encoder_2=True, unet=True)


def test_sdxl_vae_runs_in_fp32_when_fp16_would_overflow(tiny, tmp_path):
    m = build(backbone_cfg(tiny, pretrained=str(tiny / 'sdxl'), dtype='fp16', amalgamation=None,
                           taps=('up_blocks.1.upsamplers.0',)))
    assert m.frozen_modules().vae.dtype == torch.float32 and m.frozen_modules().unet.dtype == torch.float16
    # an fp16-safe VAE given with vae=... runs in fp16
    import json
    import shutil
    shutil.copytree(tiny / 'sdxl' / 'vae', tmp_path / 'vae')
    cfg = json.loads((tmp_path / 'vae' / 'config.json').read_text())
    (tmp_path / 'vae' / 'config.json').write_text(json.dumps(dict(cfg, force_upcast=False)))
    m = build(backbone_cfg(tiny, pretrained=str(tiny / 'sdxl'), dtype='fp16', amalgamation=None,
                           taps=('up_blocks.1.upsamplers.0',), vae=str(tmp_path / 'vae')))
    assert m.frozen_modules().vae.dtype == torch.float16


@pytest.mark.device
def test_sdxl_denoising_from_equals_diffusers_img2img(tiny, image, device, dtype):
    """SDXL's folder scheduler is Euler: diffusers' SDXL img2img (get_timesteps with its begin index,
    Euler's add_noise, scale_model_input and step with the scheduler's own timesteps), then the taps.
    Before the fix the backbone passed Python ints to Euler's step(), which raises."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    m = build(backbone_cfg(tiny, pretrained=str(tiny / 'sdxl'), taps=TAPS, amalgamation=None, dtype=dtype,
                           branches=[dict(name='denoised', denoising_from=60)])).to(device)
    assert type(m.img2img.scheduler).__name__ == 'EulerDiscreteScheduler'
    ours = m.extract(image.to(device))
    base = StableDiffusionXLPipeline.from_pretrained(str(tiny / 'sdxl')).to(device)
    pipe = StableDiffusionXLImg2ImgPipeline.from_pipe(base)
    h, w = image.shape[-2:]
    with torch.no_grad():
        emb, _, pooled, _ = pipe.encode_prompt('a photo', device=device, num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)
        time_ids = base._get_add_time_ids((h, w), (0, 0), (h, w), dtype=emb.dtype,
                                          text_encoder_projection_dim=base.text_encoder_2.config.projection_dim)
        added = dict(text_embeds=pooled, time_ids=time_ids.to(device))
        latents = pipe.vae.encode(image.to(device)).latent_dist.mode() * pipe.vae.config.scaling_factor
        noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(0)).to(device)
        pipe.scheduler.set_timesteps(1000)  # a span of 10 <= 50: the 1000-step schedule (on the CPU)
        timesteps, _ = pipe.get_timesteps(1000, 60 / 1000, 'cpu')  # sets Euler's begin index
        timesteps = [ts for ts in timesteps if ts >= 50]
        x = pipe.scheduler.add_noise(latents, noise, timesteps[0].reshape(1))
        for ts in timesteps[:-1]:
            pred = pipe.unet(pipe.scheduler.scale_model_input(x, ts), ts, encoder_hidden_states=emb,
                             added_cond_kwargs=added).sample
            x = pipe.scheduler.step(pred, ts, x).prev_sample
        modules = dict(pipe.unet.named_modules())
        out = {}
        hooks = [modules[n].register_forward_hook(lambda mod, a, o, n=n: out.__setitem__(n, o)) for n in TAPS]
        pipe.unet(pipe.scheduler.scale_model_input(x, timesteps[-1]), timesteps[-1], encoder_hidden_states=emb,
                  added_cond_kwargs=added)
        for hook in hooks:
            hook.remove()
    assert m.plans[0].steps == tuple(int(ts) for ts in timesteps[:-1]) and m.timesteps == [int(timesteps[-1])]
    assert len(timesteps) > 2  # several Euler steps were run
    for level, r in enumerate(on_grids(out, h, w)):
        assert_features_close(ours[level][0], r, dtype, atol=1e-4, rtol=1e-3)
