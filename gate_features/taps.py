"""Taps: denoiser modules whose outputs become feature levels, feature maps or token sequences alike.

A tap may be any module the UNet's forward calls: resnets, up/down-samplers and transformer models
give ``[B, C, h, w]`` maps; transformer blocks, attention layers, their projections (``attn2.to_q``)
and feed-forwards give tokens ``[B, h*w, C]``, which are laid back on the latent grid of their depth
(non-square inputs included). One probe pass on a non-square input learns every tap's channels,
stride and kind. Levels are sorted by stride (high resolution first, as mmseg heads expect); taps
that share a stride form separate levels, or one level of their concatenated channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .families import first_output


@dataclass(frozen=True)
class Tap:
    name: str
    channels: int
    stride: int    # relative to the SD input image
    tokens: bool   # the module gives [B, N, C] tokens, not [B, C, h, w] maps


def _grid(tokens: int, image_hw: tuple[int, int], max_stride: int = 512) -> int | None:
    """The stride whose grid over ``image_hw`` has ``tokens`` cells (SD grids halve per depth)."""
    stride = 1
    while stride <= max_stride:
        if -(-image_hw[0] // stride) * -(-image_hw[1] // stride) == tokens:
            return stride
        stride *= 2
    return None


def describe_output(name: str, out: torch.Tensor, image_hw: tuple[int, int]) -> Tap | None:
    """The :class:`Tap` of a module output seen for an SD input of ``image_hw``; ``None`` if it is
    neither a feature map nor tokens on a latent grid (time embeddings, ...)."""
    if not isinstance(out, torch.Tensor):
        return None
    if out.ndim == 4:
        return Tap(name, out.shape[1], image_hw[1] // out.shape[-1], tokens=False)
    if out.ndim == 3:
        stride = _grid(out.shape[1], image_hw)
        return None if stride is None else Tap(name, out.shape[2], stride, tokens=True)
    return None


def probe_taps(names: Sequence[str], outs: Sequence[torch.Tensor], image_hw: tuple[int, int]) -> list[Tap]:
    """Taps from their outputs of one probe pass; fails for outputs that are no features."""
    taps = []
    for name, out in zip(names, outs):
        tap = describe_output(name, out, image_hw)
        if tap is None:
            raise ValueError(f'tap {name!r} gives {tuple(getattr(out, "shape", ()))}: taps must give [B, C, h, w] '
                             'maps or [B, h*w, C] tokens on the latent grid; `python tools/list_taps.py '
                             'PRETRAINED` lists the modules that do')
        taps.append(tap)
    return taps


def to_feature_map(out: torch.Tensor, tap: Tap, image_hw: tuple[int, int]) -> torch.Tensor:
    """A tap's output as ``[B, C, h, w]`` on the grid of its stride over ``image_hw``."""
    if not tap.tokens:
        return out
    h, w = -(-image_hw[0] // tap.stride), -(-image_hw[1] // tap.stride)
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)


def plan_levels(taps: Sequence[Tap], merge_same_stride: bool = False) -> list[list[int]]:
    """Tap indices per level, levels sorted by stride (finest first), taps in the given order."""
    order = sorted(range(len(taps)), key=lambda i: taps[i].stride)
    if not merge_same_stride:
        return [[i] for i in order]
    levels: dict[int, list[int]] = {}
    for i in order:
        levels.setdefault(taps[i].stride, []).append(i)
    return list(levels.values())


def feed_forwards_tapped(model: nn.Module, names: Sequence[str]) -> set[nn.Module]:
    """Transformer blocks whose feed-forward (or a module inside it) is tapped: their feed-forward
    must run whole, since a chunked one calls the tapped module once per chunk."""
    return {block for prefix, block in model.named_modules() if hasattr(block, 'ff')
            and any(n == f'{prefix}.ff' or n.startswith(f'{prefix}.ff.') for n in names)}


def list_tappable(model: nn.Module, run: Callable[[], None], image_hw: tuple[int, int], select=first_output) -> list[Tap]:
    """Every module of ``model`` whose output in ``run()`` (a full forward on an SD input of
    ``image_hw``) is a feature map or tokens on a latent grid, in the order the forward calls them."""
    seen: dict[str, Tap | None] = {}

    def hook(name):
        def fn(module, args, output):
            if name not in seen:
                seen[name] = describe_output(name, select(module, output), image_hw)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return [tap for tap in seen.values() if tap is not None]


@torch.no_grad()
def tappable_modules(pretrained: str, size: tuple[int, int] = (512, 512), **sd_kwargs) -> list[Tap]:
    """Every tappable module of ``pretrained``'s UNet with its output at an SD input of ``size``
    (rounded up to a valid size): one full forward with an empty prompt."""
    from .frozen_stack import FrozenStableDiffusion
    sd = FrozenStableDiffusion(pretrained, **sd_kwargs)
    text = sd.encode_prompt('')
    sd.release_text_encoder()
    sd.load_denoiser()
    m = sd.pad_multiple
    image_hw = (-(-size[0] // m) * m, -(-size[1] // m) * m)
    latents = torch.zeros(1, sd.latent_channels, image_hw[0] // sd.vae_scale_factor,
                          image_hw[1] // sd.vae_scale_factor, dtype=sd.dtype)
    hidden, grid_kwargs = sd.denoiser_input(latents)
    kwargs = sd.condition_kwargs(text.to(sd.dtype), image_hw)
    t = torch.tensor([sd.family.model_timestep(sd.noise_level(50, image_hw))])

    def select(module, output):
        out = sd.family.image_output(module, output)
        # 4-D outputs that are no map on the image's grid: per-head tokens [B, heads, N, d] (a DiT's q/k norms)
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            stride = image_hw[1] // out.shape[-1]
            if not stride or out.shape[-2:] != (-(-image_hw[0] // stride), -(-image_hw[1] // stride)):
                return None
        return out
    return list_tappable(sd.denoiser, lambda: sd.denoiser(hidden, timestep=t, **kwargs, **grid_kwargs), image_hw,
                         select)


__all__ = ['tappable_modules', 'Tap', 'describe_output', 'probe_taps', 'to_feature_map', 'plan_levels', 'feed_forwards_tapped',
           'list_tappable']
