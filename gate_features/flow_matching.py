"""Flow-matching noise (SD3, FLUX): what GATE's timestep means on a rectified-flow model.

Flow models are noised as ``x_t = (1 - sigma) x_0 + sigma n`` (``FlowMatchEulerDiscreteScheduler
.scale_noise``), and the denoiser is given ``1000 sigma``. The authors' extractor (generic-diffusion-
feature, its img2img pipelines) turns GATE's ``t`` into img2img at strength ``t / 1000`` through the
model's own shifted inference schedule (28 steps) and stops after the first step: the features are
taken at that schedule's first sigma, not at ``sigma = t / 1000``. :func:`img2img_sigma` reproduces
that mapping with diffusers' own scheduler; SD3 (shift 3) gives sigma 0.111 for ``t=50``, FLUX.1-dev
(shifted by resolution) 0.126 at 512x512 and 0.195 at 1024x1024.
"""
from __future__ import annotations

import torch

#: inference steps of the authors' img2img schedule (the SD3/FLUX pipelines' default)
AUTHORS_STEPS = 28


def image_seq_len(image_hw: tuple[int, int], vae_scale_factor: int, patch_size: int) -> int:
    """Image tokens of an input of ``image_hw`` pixels (the pipelines' count for the dynamic shift)."""
    return (image_hw[0] // vae_scale_factor // patch_size) * (image_hw[1] // vae_scale_factor // patch_size)


def img2img_sigma(scheduler_config: dict, timestep: int, seq_len: int | None = None,
                  steps: int = AUTHORS_STEPS, sigmas=None) -> float:
    """The sigma of img2img's first step at strength ``timestep / 1000`` through the model's
    ``steps``-step schedule (its shift; a resolution-dependent ``mu`` from ``seq_len`` image tokens
    where the config asks for dynamic shifting), as diffusers' SD3/FLUX img2img pipelines compute it.
    ``sigmas``: the unshifted sigmas the pipeline hands the scheduler (FLUX: ``linspace(1, 1/steps,
    steps)``), else the scheduler's own ``steps`` of them (SD3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import calculate_shift
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    kwargs = {}
    if scheduler.config.get('use_dynamic_shifting', False):
        if seq_len is None:
            raise ValueError('this scheduler shifts by resolution: give the image token count (seq_len)')
        kwargs['mu'] = calculate_shift(seq_len, scheduler.config.get('base_image_seq_len', 256),
                                       scheduler.config.get('max_image_seq_len', 4096),
                                       scheduler.config.get('base_shift', 0.5), scheduler.config.get('max_shift', 1.15))
    if sigmas is None:
        scheduler.set_timesteps(steps, **kwargs)
    else:
        scheduler.set_timesteps(sigmas=list(sigmas), **kwargs)
        steps = len(sigmas)
    strength = timestep / 1000
    start = int(max(steps - min(steps * strength, steps), 0))  # img2img's get_timesteps
    return float(scheduler.sigmas[start])


def flow_noise(latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(1 - sigma) x + sigma n`` in float32: ``scale_noise`` at that sigma."""
    return (1.0 - sigma) * latents.float() + sigma * noise.float()


__all__ = ['AUTHORS_STEPS', 'image_seq_len', 'img2img_sigma', 'flow_noise']
