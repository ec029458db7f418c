"""denoising_from: diffusers' own img2img steps (get_timesteps, scheduler.step, full UNet and ControlNet
passes with the branch's LoRA), then extraction, equal our batched loop. The comparisons are marked ``device``
(docs/gpu.md): diffusers' loop then runs in fp32 on that device."""
import logging

import cv2
import numpy as np
import pytest
import torch

from conftest import assert_features_close, backbone_cfg, build, canny_net, lora
from test_features_match_diffusers import TAPS, crop, padded


def reference(tiny, image, image_uint8, start, t, scheduler_name=None, with_lora=True, controlnet=True,
              device='cpu'):
    import diffusers
    from diffusers import ControlNetModel, StableDiffusionImg2ImgPipeline
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(tiny / 'sd'), safety_checker=None)
    if scheduler_name:
        pipe.scheduler = getattr(diffusers, scheduler_name).from_config(pipe.scheduler.config)
    if with_lora:
        pipe.load_lora_weights(str(tiny / 'lora' / 'a.safetensors'))
        pipe.fuse_lora()
    pipe.to(device)
    net = ControlNetModel.from_pretrained(str(tiny / 'controlnet-canny')).to(device) if controlnet else None
    u8 = np.pad(image_uint8, ((0, image.shape[-2] - image_uint8.shape[0]), (0, image.shape[-1] - image_uint8.shape[1]),
                              (0, 0)), mode='edge')
    cond = torch.from_numpy(np.stack([cv2.Canny(u8, 100, 200)] * 3, 0))[None].float().to(device) / 255
    steps = 1000 if start - t <= 50 else 100
    with torch.no_grad():
        emb = pipe.encode_prompt('a photo', device, 1, False)[0]
        latents = pipe.vae.encode(image.to(device)).latent_dist.mode() * pipe.vae.config.scaling_factor
        pipe.scheduler.set_timesteps(steps)  # the schedule stays on the CPU, as before
        timesteps, _ = pipe.get_timesteps(steps, start / 1000, 'cpu')  # diffusers' img2img start
        timesteps = [ts for ts in timesteps if ts >= t]
        noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(0)).to(device)
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


@pytest.mark.device
@pytest.mark.parametrize('start, scheduler', [(60, None), (130, 'DDIMScheduler')])
def test_denoising_from_equals_diffusers_img2img_steps(tiny, image, image_uint8, start, scheduler, device, dtype):
    branch = dict(name='denoised', loras=[lora(tiny, 'a')], controlnets=[canny_net(tiny)], denoising_from=start)
    m = build(backbone_cfg(tiny, timestep=50, denoising_scheduler=scheduler, dtype=dtype,
                           branches=[dict(name='plain'), branch, dict(branch, name='twin')])).to(device)
    ours = m.extract(image.to(device))
    ref, timesteps = reference(tiny, padded(image), image_uint8, start, 50, scheduler, device=device)
    assert m.plans[1].steps == tuple(timesteps[:-1]) and m.timesteps[1] == timesteps[-1]
    assert len(timesteps) > 2  # several steps were run
    for level, r in enumerate(crop(ref, image)):
        assert_features_close(ours[level][1], r, dtype, atol=1e-4, rtol=1e-3)
        assert_features_close(ours[level][2], ours[level][1], dtype)  # the batched twin
    assert (ours[0][1] - ours[0][0]).abs().max() > 1e-2


@pytest.mark.device
def test_euler_denoising_equals_diffusers_img2img_steps(tiny, image, image_uint8, device, dtype):
    """Euler (SDXL's default): its step() refuses Python int timesteps (before the fix it raised
    there), it scales the model input and noises from its begin index, which PNDM and DDIM do not."""
    m = build(backbone_cfg(tiny, timestep=50, denoising_from=60, denoising_scheduler='EulerDiscreteScheduler',
                           amalgamation=None, dtype=dtype)).to(device)
    ours = m.extract(image.to(device))
    ref, timesteps = reference(tiny, padded(image), image_uint8, 60, 50, 'EulerDiscreteScheduler', with_lora=False,
                               controlnet=False, device=device)
    assert m.plans[0].steps == tuple(timesteps[:-1]) and m.timesteps == [timesteps[-1]] and len(timesteps) > 2
    for level, r in enumerate(crop(ref, image)):
        assert_features_close(ours[level][0], r, dtype, atol=1e-4, rtol=1e-3)


@pytest.mark.device
def test_denoising_is_deterministic_in_eval_and_checked(tiny, image, device, dtype):
    m = build(backbone_cfg(tiny, noise='gate', denoising_from=60, amalgamation=None, dtype=dtype)).to(device).eval()
    a, b = m.extract(image.to(device)), m.extract(image.to(device))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="noise='none'"):
        build(backbone_cfg(tiny, noise='none', denoising_from=60, amalgamation=None))
    with pytest.raises(ValueError, match='must be above'):
        build(backbone_cfg(tiny, timestep=50, denoising_from=40, amalgamation=None))
    with pytest.raises(ValueError, match='not a diffusers scheduler'):
        build(backbone_cfg(tiny, denoising_from=60, denoising_scheduler='Nope', amalgamation=None))


def test_img2img_start_and_moved_extraction_timestep_are_logged_once(tiny, image):
    """img2img starts where its schedule says (PNDM from 60: 61, DDIM from 150: 141); an extraction
    timestep off the schedule moves to the next scheduled one, which the UNet gets, and one warning
    at build time names both values (none for a branch that stays, none at forward)."""
    from mmengine.logging import MMLogger
    from mmseg_gate.models.denoising import load_scheduler, plan_denoising
    assert plan_denoising(load_scheduler(str(tiny / 'sd')), 60, 50).start == 61
    assert plan_denoising(load_scheduler(str(tiny / 'sd'), 'DDIMScheduler'), 150, 50).start == 141

    class Records(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    logger, records = MMLogger.get_current_instance(), Records()
    logger.addHandler(records)
    try:
        m = build(backbone_cfg(tiny, branches=[dict(name='moved', timestep=55, denoising_from=200),
                                               dict(name='stays', timestep=50, denoising_from=60)]))
        assert m.plans[0].start == 201 and m.timesteps == [61, 50]  # PNDM, 100 steps: ..., 71, 61, 51
        logged = [msg for msg in records.messages if 'denoising_from' in msg]
        assert len(logged) == 1 and "branch 'moved': timestep 55 -> 61" in logged[0], records.messages
        assert 'stays' not in logged[0]
        seen = []
        hook = m.frozen_modules().unet.register_forward_pre_hook(  # the denoiser gets timestep= by keyword
            lambda mod, args, kwargs: seen.append(kwargs['timestep']), with_kwargs=True)
        try:
            m.extract(image)
        finally:
            hook.remove()
        assert m.branch_groups == [[0, 1]] and seen[-1].tolist() == [61, 50]  # the batched extraction pass
    finally:
        logger.removeHandler(records)
    assert [msg for msg in records.messages if 'denoising_from' in msg] == logged  # the forward logged nothing
