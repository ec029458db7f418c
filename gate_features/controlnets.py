"""ControlNets of the branches: each loaded once, each run once per distinct input.

Two branches that use the same ControlNet on the same noisy latents, timestep and prompt get the
same residuals, so the net runs once for them; the distinct inputs of one (net, condition, scale)
go through it as one batch. Control images are made once per condition type from the input batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .branches import BranchSpec
from .conditions import build_condition
from .families import FAMILIES, DenoiserFamily, TextCondition
from .frozen_stack import FrozenStableDiffusion, check_weights_location, from_pretrained_or_explain


@dataclass
class BranchInput:
    """What one branch feeds the denoiser and its ControlNets in this forward."""
    noisy: torch.Tensor          # [B, C, h, w] noisy latents
    timestep: torch.Tensor       # [B]
    text: TextCondition
    key: tuple                   # hashable identity of (noisy latents, timestep, text)
    image_embeds: list | None = None  # per IP-Adapter [B, 1, D] (the input's CLIP embedding)


def load_controlnets(sd: FrozenStableDiffusion, specs: Sequence[BranchSpec], dtype: torch.dtype,
                     hub_kwargs: dict) -> dict[str, str]:
    """Every distinct ControlNet path once into ``sd.controlnets`` (the family's ControlNet class);
    returns path -> key there."""
    paths = list(dict.fromkeys(c.path for s in specs for c in s.controlnets))
    index = {p: str(i) for i, p in enumerate(paths)}
    sd.controlnets = nn.ModuleDict()
    quantized = {} if sd.quantization is None else dict(quantization_config=sd.quantization)
    for path, key in index.items():
        check_weights_location(path, 'ControlNet')
        check_controlnet_class(sd.family, path, hub_kwargs)
        net = from_pretrained_or_explain(sd.family.controlnet_model_class().from_pretrained, path, 'ControlNet',
                                         dtype=dtype, **quantized, **hub_kwargs)
        sd.family.prepare_controlnet(net, sd.denoiser, path)
        for c in (c for s in specs for c in s.controlnets if c.path == path):
            sd.family.check_control_mode(net, c.mode, path)
        sd.controlnets[key] = net.requires_grad_(False).eval()
    return index


def check_controlnet_class(family: DenoiserFamily, path: str, hub_kwargs: dict) -> None:
    """Refuse a ControlNet folder of another family before its weights load: its ``config.json``'s
    ``_class_name`` must be the family's ControlNet class (loading another family's net fails later, or not
    at all, with a shape or arithmetic error that names no path)."""
    cls = family.controlnet_model_class()
    config = from_pretrained_or_explain(cls.load_config, path, 'ControlNet', **hub_kwargs)
    found = config.get('_class_name')
    if found is None or found == family.controlnet_class:
        return
    owners = sorted(f.name for f in FAMILIES.values() if f.controlnet_class == found)
    made_for = f", a ControlNet for the {'/'.join(owners)} famil{'ies' if len(owners) > 1 else 'y'}" if owners else ''
    raise ValueError(f"ControlNet {path!r} is a {found} (its config.json's _class_name{made_for}); the {family.name} "
                     f'family takes {family.controlnet_class} folders: use a ControlNet made for this base model')


def controlnet_residuals(sd: FrozenStableDiffusion, index: dict[str, str], specs: Sequence[BranchSpec],
                         inputs: Sequence[BranchInput], pixels: torch.Tensor, condition_kwargs: Callable,
                         batch: bool = True, timed=None) -> list[tuple]:
    """Per branch ``(down residuals, mid residual)`` (``(None, None)`` without ControlNet; DiTs: per-block
    residuals and no mid).

    ``condition_kwargs(text)``: the family's conditioning kwargs for a batch of text conditions.
    Several ControlNets of one branch add up (as diffusers' MultiControlNet).
    """
    calls: dict = {}  # ControlNetSpec -> {input key: BranchInput}
    for spec, inp in zip(specs, inputs):
        for net in spec.controlnets:
            calls.setdefault(net, {}).setdefault(inp.key, inp)
    conditions: dict[tuple, torch.Tensor] = {}
    control_inputs: dict[tuple, torch.Tensor] = {}  # (condition, net path) -> what the net gets
    done: dict[tuple, tuple] = {}  # (ControlNetSpec, input key) -> (down, mid)
    b = pixels.shape[0]
    for net, by_key in calls.items():
        if net.condition_key not in conditions:
            with timed('conditions'):
                conditions[net.condition_key] = build_condition(net.condition, pixels, **dict(net.condition_cfg))
        module = sd.controlnets[index[net.path]]
        if (net.condition_key, net.path) not in control_inputs:
            with timed('conditions'):
                control_inputs[net.condition_key, net.path] = sd.family.control_input(
                    sd, conditions[net.condition_key], module)
        cond = control_inputs[net.condition_key, net.path]
        keys = list(by_key)
        for chunk in ([keys] if batch else [[k] for k in keys]):
            parts = [by_key[k] for k in chunk]
            text = TextCondition.cat([p.text for p in parts])
            with timed('controlnet'):
                hidden, grid_kwargs = sd.denoiser_input(torch.cat([p.noisy for p in parts]))
                kwargs = {**sd.family.controlnet_kwargs(module, condition_kwargs(text), net.mode), **grid_kwargs}
                down, mid = sd.family.split_residuals(module(
                    hidden, timestep=torch.cat([p.timestep for p in parts]),
                    controlnet_cond=cond.repeat(len(chunk), *[1] * (cond.ndim - 1)), conditioning_scale=net.scale,
                    return_dict=False, **kwargs), module, sd.denoiser)
            for j, key in enumerate(chunk):
                done[net, key] = (per_distinct(lambda d: None if d is None else d[j * b:(j + 1) * b], down),
                                  None if mid is None else mid[j * b:(j + 1) * b])
    out = []
    for spec, inp in zip(specs, inputs):
        down = mid = None
        for net in spec.controlnets:
            d, m = done[net, inp.key]
            down = d if down is None else per_distinct(_add, down, d)
            mid = m if mid is None or m is None else mid + m
        out.append((down, mid))
    return out


def per_distinct(fn: Callable, *lists: Sequence) -> list:
    """``[fn(*xs) for xs in zip(*lists)]`` with ``fn`` run once per distinct tuple of objects: per-block
    residual lists repeat one tensor over several blocks (FLUX), and a copy per block would multiply their
    memory. ``None`` entries (blocks a ControlNet does not reach) are passed to ``fn``."""
    done: dict[tuple, object] = {}
    out = []
    for xs in zip(*lists):
        key = tuple(map(id, xs))
        if key not in done:
            done[key] = fn(*xs)
        out.append(done[key])
    return out


def _add(a, b):
    """Two ControlNets' residuals for one block (``None``: no residual)."""
    return a if b is None else b if a is None else a + b


def _cat_or_zeros(*xs):
    """One block's residuals of the batched branches; a branch without one adds zeros (``None`` if none has)."""
    ref = next((x for x in xs if x is not None), None)
    return None if ref is None else torch.cat([torch.zeros_like(ref) if x is None else x for x in xs])


def take_residuals(residuals: list, group: Sequence[int]) -> list[tuple]:
    """The group's residuals, cleared from ``residuals``: the UNet pass then holds the only
    references and frees the ControlNet outputs once it has batched them."""
    taken = [residuals[i] for i in group]
    for i in group:
        residuals[i] = None
    return taken


def batch_residuals(residuals: list[tuple]) -> tuple:
    """One ``(down, mid)`` for the batched branches; branches without ControlNet add zeros.

    ``residuals`` is emptied: the batched copies are all the UNet needs.
    """
    if len(residuals) == 1 or all(r[0] is None for r in residuals):
        down, mid = residuals[0]
        residuals.clear()
        return down, mid
    ref_down, ref_mid = next(r for r in residuals if r[0] is not None)
    zeros = ([None] * len(ref_down), None if ref_mid is None else torch.zeros_like(ref_mid))
    parts = [r if r[0] is not None else zeros for r in residuals]  # x + 0 == x
    residuals.clear()
    down = per_distinct(_cat_or_zeros, *[p[0] for p in parts])
    mid = None if ref_mid is None else torch.cat([p[1] for p in parts])
    return down, mid


__all__ = ['BranchInput', 'load_controlnets', 'check_controlnet_class', 'controlnet_residuals', 'per_distinct',
           'take_residuals', 'batch_residuals']
