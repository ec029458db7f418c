"""IP-Adapter as a technique: the input image itself as the image prompt.

The IP-Adapter files of all branches are loaded together with diffusers' own UNet loader
(``_load_ip_adapter_weights``: image projection + decoupled cross-attention processors) on the one
shared UNet; each UNet call sets the processors' per-adapter scales of its branches (0 for an
adapter a branch does not use: its attention then equals plain cross-attention). The CLIP image
encoders run once per forward on the input, each preprocessed by transformers' ``CLIPImageProcessor``
sized to its own ``config.image_size`` as diffusers' ``load_ip_adapter`` makes it (224 for h94's).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .utils.files import file_sha256
from .frozen_stack import check_weights_location, from_pretrained_or_explain


def read_ip_adapter(path: str) -> dict:
    """``{'image_proj': ..., 'ip_adapter': ...}`` from a .safetensors or a tensor-only .bin file."""
    local = Path(os.path.expanduser(str(path)))
    if not local.is_file():
        raise FileNotFoundError(f'IP-Adapter file {str(path)!r} not found (e.g. `hf download h94/IP-Adapter '
                                'models/ip-adapter_sd15.safetensors models/image_encoder --local-dir ...`)')
    if local.suffix == '.safetensors':
        from safetensors.torch import load_file
        flat = load_file(str(local))
        state = {'image_proj': {}, 'ip_adapter': {}}
        for key, value in flat.items():
            part, _, rest = key.partition('.')
            if part in state:
                state[part][rest] = value
    else:
        state = torch.load(str(local), map_location='cpu', weights_only=True)  # tensors only: no pickled code
    if not state.get('image_proj') or not state.get('ip_adapter'):
        raise ValueError(f'{str(path)!r} is no IP-Adapter file (it needs image_proj.* and ip_adapter.* weights)')
    return state


class IPAdapters:
    """The branches' IP-Adapters on one UNet.

    Args:
        unet: the shared UNet (gets the IP-Adapter processors and image projection).
        branch_adapters: per branch its ``ip_adapters`` dicts ``dict(path, image_encoder, scale=1.0)``.
        dtype, hub_kwargs: for the image encoders.
    """

    def __init__(self, unet: nn.Module, branch_adapters: Sequence[Sequence[dict]], dtype: torch.dtype,
                 hub_kwargs: dict) -> None:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
        self.paths = list(dict.fromkeys(a['path'] for adapters in branch_adapters for a in adapters))
        encoder_of = {}
        for adapters in branch_adapters:
            for a in adapters:
                if 'image_encoder' not in a:
                    raise ValueError(f'ip_adapters entry {a}: give image_encoder=<CLIP vision folder>')
                if encoder_of.setdefault(a['path'], a['image_encoder']) != a['image_encoder']:
                    raise ValueError(f'IP-Adapter {a["path"]!r} is used with two image encoders')
        unet._load_ip_adapter_weights([read_ip_adapter(p) for p in self.paths])
        self.sha256 = {p: file_sha256(os.path.expanduser(p)) for p in self.paths}  # for checkpoints' provenance
        self.unet = unet
        self.encoder_paths = list(dict.fromkeys(encoder_of[p] for p in self.paths))
        self.encoders = nn.ModuleDict()
        for i, path in enumerate(self.encoder_paths):
            check_weights_location(path, 'CLIP image encoder')
            self.encoders[str(i)] = from_pretrained_or_explain(
                CLIPVisionModelWithProjection.from_pretrained, path, 'CLIP image encoder', dtype=dtype,
                **hub_kwargs).requires_grad_(False).eval()
        self.adapter_encoder = [self.encoder_paths.index(encoder_of[p]) for p in self.paths]
        # per encoder, what load_ip_adapter makes when a pipeline has none: resize and crop to the
        # encoder's own input size (a default 224 processor breaks an encoder of another size)
        self.image_processors = [CLIPImageProcessor(size=e.config.image_size, crop_size=e.config.image_size)
                                 for e in self.encoders.values()]
        self.branch_scales = [tuple(next((float(a.get('scale', 1.0)) for a in adapters if a['path'] == p), 0.0)
                                    for p in self.paths) for adapters in branch_adapters]
        self._set = None

    @classmethod
    def for_branches(cls, sd, specs, attention: dict | None, dtype: torch.dtype, hub_kwargs: dict):
        """The branches' IP-Adapters on ``sd``'s UNet, or ``None`` when no branch has one."""
        if not any(s.ip_adapters for s in specs):
            return None
        if attention is not None:
            raise ValueError('attention maps and IP-Adapters both replace the cross-attention processors: '
                             'use one of them per backbone')
        ip = cls(sd.unet, [[dict(a) for a in s.ip_adapters] for s in specs], dtype, hub_kwargs)
        sd.image_encoders = ip.encoders  # moved with the frozen stack
        return ip

    @staticmethod
    def with_image_embeds(kwargs: dict, per_branch: list[list[torch.Tensor]]) -> dict:
        """UNet kwargs plus the IP-Adapter image embeddings of the batched branches."""
        embeds = [torch.cat(parts) for parts in zip(*per_branch)]
        return dict(kwargs, added_cond_kwargs=dict(kwargs.get('added_cond_kwargs', {}), image_embeds=embeds))

    @property
    def processors(self) -> list:
        return [p for p in self.unet.attn_processors.values() if hasattr(p, 'to_k_ip')]

    def set_scales(self, scales: tuple[float, ...]) -> None:
        """Per-adapter scales for the next UNet calls (no-op if already set)."""
        if scales != self._set:
            for proc in self.processors:
                proc.scale = list(scales)
            self._set = scales

    @torch.no_grad()
    def image_embeds(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Per adapter ``[B, 1, D]``: the CLIP image embedding of each input (0..255 pixels)."""
        images = [p.round().clamp(0, 255).to(torch.uint8).cpu() for p in pixels]
        embeds = []
        for encoder, processor in zip(self.encoders.values(), self.image_processors):
            inputs = processor(images=images, return_tensors='pt').pixel_values
            param = next(encoder.parameters())
            embeds.append(encoder(inputs.to(param.device, param.dtype)).image_embeds)
        return [embeds[i][:, None] for i in self.adapter_encoder]

    def zero_embeds(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        """Stand-ins for calls without image (the probe): shaped as :meth:`image_embeds`."""
        return [torch.zeros(batch, 1, self.encoders[str(i)].config.projection_dim, dtype=like.dtype,
                            device=like.device) for i in self.adapter_encoder]


__all__ = ['read_ip_adapter', 'IPAdapters']
