"""The noise policy: which noisy latents each branch's UNet (and ControlNet) sees.

The authors draw a fresh VAE posterior sample and fresh noise for every branch on every call: in
training that is augmentation and keeps the branches diverse, so ``'gate'`` (the default) does the
same while the module trains. At test time their features changed from run to run (a defect);
``'gate'`` then uses seeded draws instead, a different seed per branch, so branches still differ
as they did in training while the same image always gives the same features.
"""
from __future__ import annotations

from typing import Sequence

import torch

#: mode -> what it does (the error message lists them)
NOISE_MODES = {
    'gate': 'fresh posterior sample and noise per branch and step in training; seeded per branch in eval',
    'fixed': 'one seeded noise pattern shared by all branches, train and eval; posterior mode',
    'random': 'fresh posterior sample and noise per branch on every call, also in eval (not reproducible)',
    'none': 'clean latents (posterior mode), no noise: clean-image features, e.g. for CleanDIFT UNets with timestep=0',
}

POSTERIOR_SEED_OFFSET = 100_000  # seeded posterior draws use seed + branch + this


class NoisePolicy:
    """Makes per-branch noisy latents from the VAE posterior.

    Args:
        mode: one of :data:`NOISE_MODES`.
        seed: seed of the deterministic draws (branch ``i`` uses ``seed + i`` in ``'gate'`` eval).
        sample_posterior: sample the VAE posterior (``True``) or take its mean (``False``);
            ``None``: sample, except in ``'fixed'`` mode.
    """

    def __init__(self, mode: str = 'gate', seed: int = 0, sample_posterior: bool | None = None) -> None:
        if mode not in NOISE_MODES:
            modes = '; '.join(f'{k!r}: {v}' for k, v in NOISE_MODES.items())
            raise ValueError(f'noise={mode!r} is not a noise policy; use one of {modes}')
        self.mode, self.seed = mode, int(seed)
        self.sample_posterior = mode not in ('fixed', 'none') if sample_posterior is None else bool(sample_posterior)

    @property
    def shared_across_branches(self) -> bool:
        """Whether branches at one timestep see the same latents (then ControlNet calls can be shared)."""
        return self.mode in ('fixed', 'none')

    def _draws(self, shape: torch.Size, seed: int, training: bool, like: torch.Tensor) -> torch.Tensor:
        """Standard normal draws for one branch: fresh, or a seeded pattern shared by the batch.

        The seeded pattern is made on the CPU with the size of one sample and expanded over the batch:
        identical on every device and whatever the batch position of an image.
        """
        if self.mode == 'random' or (self.mode == 'gate' and training):
            return torch.randn(shape, device=like.device, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        return torch.randn((1, *shape[1:]), generator=g).to(like.device).expand(shape)

    @torch.no_grad()
    def noisy_latents(self, mean: torch.Tensor, std: torch.Tensor, levels: Sequence, training: bool,
                      add_noise) -> list[torch.Tensor]:
        """Per branch (given by its noise level: a timestep, or a hashable plan that ``add_noise``
        understands) ``add_noise(posterior draw, noise, level)``; ``mean``/``std`` are the scaled
        posterior.

        In the shared modes (``'fixed'``, and ``'none'``: no noise, ``add_noise`` gets ``None``) the
        branches of one level get the same tensor object.
        """
        out, shared = [], {}
        for branch, level in enumerate(levels):
            if self.shared_across_branches and level in shared:
                out.append(shared[level])
                continue
            seed = self.seed + (0 if self.shared_across_branches else branch)
            latents = mean
            if self.sample_posterior:  # its own seed stream: the two draws must be independent
                latents = mean + std * self._draws(mean.shape, seed + POSTERIOR_SEED_OFFSET, training, mean)
            noise = None if self.mode == 'none' else self._draws(mean.shape, seed, training, mean)
            shared[level] = add_noise(latents, noise, level)
            out.append(shared[level])
        return out


__all__ = ['NOISE_MODES', 'NoisePolicy']
