"""What diffusion-transformer families share: patch-token grids, image tokens of joint blocks.

A DiT patchifies the latents (``patch_size`` 2 over the /8 VAE: one token per 16x16 pixels, all taps
at one stride) and its blocks give tokens ``[B, h*w, C]`` laid row-major on that grid. Feed-forwards
are never chunked here: MMDiT blocks chunk their text stream with the image stream's chunk size.
"""
from __future__ import annotations

from torch import nn

from .base import DenoiserFamily


class DiTFamily(DenoiserFamily):
    denoiser = 'transformer'
    chunkable_feed_forwards = False

    def latent_multiple(self, denoiser: nn.Module) -> int:
        return int(denoiser.config.patch_size)

    def select_with_residuals(self, residual: dict):
        """``select(module, output)``: a tapped block's image tokens *plus its ControlNet residual*
        (``residual``: block id -> tensor), what the next block receives (diffusers adds the residual after the
        block, so a plain hook misses it)."""
        def select(module, output):
            out = self.image_output(module, output)
            return out + residual[id(module)] if id(module) in residual else out
        return select


__all__ = ['DiTFamily']
