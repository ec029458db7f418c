"""The denoiser calls of :class:`~gate_features.GATEFeatures`: the probe at build, adapter switches, one batched
pass per branch group stopped after the deepest tap. A mixin: the state (frozen stack, branches, taps) is the
extractor's."""
from __future__ import annotations

import contextlib

import torch

from .branch_batching import BASE_ADAPTER, mixed_adapter_batch
from .controlnets import BranchInput, batch_residuals
from .families import TextCondition
from .frozen_stack import run_until_taps
from .taps import probe_taps


class DenoiserPasses:
    """How :class:`~gate_features.GATEFeatures` calls its shared denoiser (no state of its own)."""

    @property
    def _exit_modules(self) -> list:
        """The modules whose outputs end the denoiser pass: the taps, and the attention-map layers."""
        return self.tap_modules + ([] if self.attention is None else self.attention.layer_modules)

    @torch.no_grad()
    def _probe_taps(self):
        """One tiny denoiser pass on a non-square input to learn each tap's channels, stride and kind."""
        sd = self.sd
        m = sd.latent_multiple  # a 2m x 3m latent: 2x3 of the UNet's deepest cells, or 2x3 DiT patches
        # seeded noise: also the calibration input of drop_channels='auto'
        latents = torch.randn(1, sd.latent_channels, 2 * m, 3 * m,
                              generator=torch.Generator().manual_seed(0)).to(sd.dtype)
        image_hw = (2 * m * sd.vae_scale_factor, 3 * m * sd.vae_scale_factor)
        self._set_adapters(())
        kwargs = sd.condition_kwargs(self.prompts.fixed(0).to(sd.dtype), image_hw)
        if self.ip is not None:
            self.ip.set_scales(tuple(0.0 for _ in self.ip.paths))
            kwargs = self.ip.with_image_embeds(kwargs, [self.ip.zero_embeds(1, latents)])
        t = torch.tensor([sd.family.model_timestep(self._noise_level(self.timestep, image_hw))])
        hidden, grid_kwargs = sd.denoiser_input(latents)
        outs = run_until_taps(sd.denoiser, self._exit_modules, hidden, timestep=t, return_dict=False,
                              select=sd.family.image_output, **kwargs, **grid_kwargs)
        self.token_normalizer.calibrate(outs[:len(self.taps)])
        taps = probe_taps(self.taps, outs[:len(self.taps)], image_hw)
        return taps if self.attention is None else [*taps, self.attention.select(image_hw)]

    def _set_adapters(self, key: tuple) -> None:
        """Switch the shared denoiser to the adapters ``key`` = ((name, scale), ...); no-op if already set."""
        if key == self._active_adapters or not self.adapters.names:
            self._active_adapters = key
            return
        denoiser = self.sd.denoiser
        if key:
            denoiser.enable_lora()
            denoiser.set_adapters([n for n, _ in key], weights=[s for _, s in key])
        else:
            denoiser.disable_lora()
        for p in self._lora_params:  # peft marks active adapters trainable; they are frozen here
            p.requires_grad_(False)
        self._active_adapters = key

    def _noise_level(self, timestep: int, image_hw: tuple[int, int]):
        """The family's noise level of GATE's ``timestep`` for a model input of ``image_hw`` (``sigma=``
        replaces it on flow-matching families), memoised: the flow mapping builds a schedule."""
        if self.sigma is not None:
            return self.sigma
        key = (timestep, self.sd.seq_len(image_hw))
        if key not in self._levels:
            self._levels[key] = self.sd.noise_level(timestep, image_hw)
        return self._levels[key]

    def _pass(self, group: list[int], parts: list[BranchInput], residuals: list[tuple],
              condition_kwargs, full: bool = False) -> list[list[torch.Tensor]] | torch.Tensor:
        """One denoiser call for the branches ``group`` (their inputs ``parts``), stopped after the last tap:
        their tap outputs; ``full``: the whole forward, its prediction.

        ``residuals``: the group's ControlNet residuals, handed over (see :func:`take_residuals`).
        """
        n, b = len(group), parts[0].noisy.shape[0]
        down, mid = batch_residuals(residuals)
        keys = [self.adapter_keys[i] for i in group]
        adapters = tuple(dict.fromkeys(kv for key in keys for kv in key))
        self._set_adapters(adapters)
        batch = contextlib.nullcontext()
        if n > 1 and adapters:
            batch = mixed_adapter_batch(self._lora_layers, [key[0][0] if key else BASE_ADAPTER
                                                            for key in keys for _ in range(b)])
        text = TextCondition.cat([p.text for p in parts])
        latents = torch.cat([p.noisy for p in parts])
        timesteps = torch.cat([p.timestep for p in parts])
        hidden, grid_kwargs = self.sd.denoiser_input(latents)
        kwargs = {**condition_kwargs(text), **grid_kwargs}
        if self.ip is not None:
            self.ip.set_scales(self.ip.branch_scales[group[0]])
            kwargs = self.ip.with_image_embeds(kwargs, [p.image_embeds for p in parts])
        if full:
            with batch:
                return self.sd.denoiser(hidden, timestep=timesteps, down_block_additional_residuals=down,
                                        mid_block_additional_residual=mid, return_dict=False, **kwargs)[0]
        with batch:
            if down is not None or mid is not None:
                kwargs.update(self.sd.family.residual_kwargs(self.sd.denoiser, down, mid))
            outs = run_until_taps(self.sd.denoiser, self._exit_modules, hidden, timestep=timesteps, return_dict=False,
                                  select=self.sd.family.tap_select(self.sd.denoiser, down), **kwargs)
        outs = outs[:len(self.taps)]
        if self.token_normalizer.active:
            outs = [self.token_normalizer(i, o) for i, o in enumerate(outs)]
        if self.attention is not None:
            outs.append(self.attention.collect(tuple(s * self.sd.vae_scale_factor for s in latents.shape[-2:])))
        return [[o[j * b:(j + 1) * b] for o in outs] for j in range(n)]


__all__ = ['DenoiserPasses']
