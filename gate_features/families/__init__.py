"""Model families: what differs between Stable Diffusion 1/2, SDXL, SD3, PixArt and FLUX.

One module per family (:mod:`.sd`, :mod:`.sd3`, :mod:`.pixart`, :mod:`.flux`) on the interface of :mod:`.base`.
The family is read from the folder (``model_index.json``'s pipeline class, else its components):
no flag to set.
"""
from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

from ..massive_activations import check_drop_channels
from .base import DenoiserFamily, TextCondition, first_output, token_ids
from .flux import FluxFamily
from .pixart import PixArtAlphaFamily, PixArtSigmaFamily
from .sd import StableDiffusionFamily, StableDiffusionXLFamily
from .sd3 import StableDiffusion3Family

#: most specific first: detection takes the first family that matches
FAMILIES: dict[str, DenoiserFamily] = {f.name: f for f in (
    StableDiffusion3Family(), FluxFamily(), PixArtSigmaFamily(), PixArtAlphaFamily(), StableDiffusionXLFamily(), StableDiffusionFamily())}


def _components(pretrained: str, **hub_kwargs) -> dict:
    """``model_index.json`` of a folder or hub id; for a folder without one, its subfolders as keys."""
    path = Path(os.path.expanduser(str(pretrained)))
    if path.is_dir():
        index = path / 'model_index.json'
        components = json.loads(index.read_text()) if index.is_file() else {}
        return {**{p.name: None for p in path.iterdir() if p.is_dir()}, **components}
    from diffusers import DiffusionPipeline
    return dict(DiffusionPipeline.load_config(str(pretrained), **hub_kwargs))


def detect_family(pretrained: str, **hub_kwargs) -> DenoiserFamily:
    """The family of a diffusers folder or hub id."""
    components = _components(pretrained, **hub_kwargs)
    for family in FAMILIES.values():
        if family.matches(components):
            return family
    if '_class_name' not in components:  # no pipeline at all: checked as SD's layout, whose message lists the folders
        return FAMILIES['sd']
    raise ValueError(f'{str(pretrained)!r} is no pipeline of a supported family ({sorted(FAMILIES)}): its '
                     f"model_index.json names {components.get('_class_name')!r} with components "
                     f"{sorted(k for k in components if not k.startswith('_'))}")


def check_family_options(family: DenoiserFamily, specs, denoising_from, attention, sigma, token_norm=None,
                         drop_channels=None) -> None:
    """Fail at build time for options the family does not have (yet), naming what to change."""
    unet_only = []
    if family.denoiser != 'unet':
        if denoising_from is not None or any(s.denoising_from is not None for s in specs):
            unet_only.append('denoising_from (img2img steps before extraction)')
        if attention is not None:
            unet_only.append("attention (cross-attention maps; tap the blocks' attn modules instead)")
        if any(s.ip_adapters for s in specs):
            unet_only.append('ip_adapters')
        if family.controlnet_class is None and any(s.controlnets for s in specs):
            unet_only.append(f'controlnets (diffusers has no {family.name} ControlNet)')
    if family.denoiser == 'unet' and (token_norm or drop_channels):
        unet_only.append('token_norm/drop_channels (for diffusion transformers\' block tokens)')
    if unet_only:
        raise ValueError(f'the {family.name} family does not support ' + '; '.join(unet_only)
                         + ': remove it from the backbone config')
    if sigma is not None and not family.flow_matching:
        raise ValueError(f'sigma={sigma!r} is for flow-matching families (sd3, flux); the {family.name} family is '
                         'noised by timestep: give timestep= instead')
    check_sigma(sigma)
    check_drop_channels(drop_channels)


def check_sigma(sigma) -> None:
    """``sigma`` is one number in [0, 1] (every branch's flow-matching noise level; 0: the clean image, as the
    guideline's t=0 reference) or ``None``."""
    if sigma is None:
        return
    is_number = isinstance(sigma, numbers.Real) and not isinstance(sigma, bool)
    if not is_number or not 0 <= sigma <= 1:
        per_branch = ' (one for all branches; per branch: their own timestep=)' if isinstance(sigma, (list, tuple,
                                                                                                     dict)) else ''
        error = ValueError if is_number else TypeError
        raise error(f'sigma={sigma!r}: give a number in [0, 1] (the flow-matching noise level){per_branch}, e.g. '
                    "sigma=0.111, or leave it out for the authors' t -> sigma mapping")


__all__ = ['TextCondition', 'DenoiserFamily', 'StableDiffusionFamily', 'StableDiffusionXLFamily',
           'StableDiffusion3Family', 'FluxFamily', 'PixArtSigmaFamily', 'PixArtAlphaFamily', 'FAMILIES',
           'detect_family', 'token_ids', 'first_output', 'check_family_options', 'check_sigma']
