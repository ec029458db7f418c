"""denoising_from: diffusers' own img2img steps (get_timesteps, scheduler.step, full UNet and ControlNet
passes with the branch's LoRA), then extraction, equal our batched loop."""
import cv2
import numpy as np
import pytest
import torch

from conftest import backbone_cfg, build, canny_net, lora
from test_features_match_diffusers import TAPS, crop, padded


def reference(tiny, image, image_uint8, start, t, scheduler_name=None, with_lora=True, controlnet=True):
    import diffusers
    from diffusers import ControlNetModel, StableDiffusionImg2ImgPipeline
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(tiny / 'sd'), safety_checker=None)
    if scheduler_name:
        pipe.scheduler = getattr(diffusers, scheduler_name).from_config(pipe.scheduler.config)
    if with_lora:
        pipe.load_lora_weights(str(tiny / 'lora' / 'a.safetensors'))
        pipe.fuse_lora()
    net = ControlNetModel.from_pretrained(str(tiny / 'controlnet-canny')) if controlnet else None
    u8 = np.pad(image_uint8, ((0, image.shape[-2] - image_uint8.shape[0]), (0, image.shape[-1] - image_uint8.shape[1]),
                              (0, 0)), mode='edge')
    cond = torch.from_numpy(np.stack([cv2.Canny(u8, 100, 200)] * 3, 0))[None].float() / 255
    steps = 1000 if start - t <= 50 else 100
    with torch.no_grad():
        emb = pipe.encode_prompt('a photo', 'cpu', 1, False)[0]
        latents = pipe.vae.encode(image).latent_dist.mode() * pipe.vae.config.scaling_factor
        pipe.scheduler.set_timesteps(steps)
        timesteps, _ = pipe.get_timesteps(steps, start / 1000, 'cpu')  # diffusers' img2img start
        timesteps = [ts for ts in timesteps if ts >= t]
        noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(0))
        x = pipe.scheduler.add_noise(latents, noise, timesteps[0].reshape(1))

        def residuals(inp, ts):
            if net is None:
                return {}
            down, mid = net(inp, ts, encoder_hidden_states=emb, controlnet_cond=cond, return_dict=False)
            return dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)

        for ts in timesteps[:-1]:
            inp = pipe.scheduler.scale_model_input(x, ts)
            pred = pipe.unet(inp, ts, encoder_hidden_states=emb, **residuals(inp, ts)).sample
            x = pipe.scheduler.step(pred, ts, x).prev_sample
        ts = timesteps[-1]
        inp = pipe.scheduler.scale_model_input(x, ts)
        modules = dict(pipe.unet.named_modules())
        out = {}
        hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: out.__setitem__(n, o)) for n in TAPS]
        pipe.unet(inp, ts, encoder_hidden_states=emb, **residuals(inp, ts))
        for hook in hooks:
            hook.remove()
    return [out[n] for n in reversed(TAPS)], [int(s) for s in timesteps]


@pytest.mark.parametrize('start, scheduler', [(60, None), (130, 'DDIMScheduler')])
def test_denoising_from_equals_diffusers_img2img_steps(tiny, image, image_uint8, start, scheduler):
    branch = dict(name='denoised', loras=[lora(tiny, 'a')], controlnets=[canny_net(tiny)], denoising_from=start)
    m = build(backbone_cfg(tiny, timestep=50, denoising_scheduler=scheduler,
                           branches=[dict(name='plain'), branch, dict(branch, name='twin')]))
    ours = m.extract(image)
    ref, timesteps = reference(tiny, padded(image), image_uint8, start, 50, scheduler)
    assert m.plans[1].steps == tuple(timesteps[:-1]) and m.timesteps[1] == timesteps[-1]
    assert len(timesteps) > 2  # several steps were run
    for level, r in enumerate(crop(ref, image)):
        torch.testing.assert_close(ours[level][1], r, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(ours[level][2], ours[level][1])  # the batched twin
    assert (ours[0][1] - ours[0][0]).abs().max() > 1e-2


def test_denoising_is_deterministic_in_eval_and_checked(tiny, image):
    m = build(backbone_cfg(tiny, noise='gate', denoising_from=60, amalgamation=None)).eval()
    a, b = m.extract(image), m.extract(image)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="noise='none'"):
        build(backbone_cfg(tiny, noise='none', denoising_from=60, amalgamation=None))
    with pytest.raises(ValueError, match='must be above'):
        build(backbone_cfg(tiny, timestep=50, denoising_from=40, amalgamation=None))
    with pytest.raises(ValueError, match='not a diffusers scheduler'):
        build(backbone_cfg(tiny, denoising_from=60, denoising_scheduler='Nope', amalgamation=None))
