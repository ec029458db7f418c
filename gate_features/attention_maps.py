"""Cross-attention maps as features: softmax(QK^T / sqrt(d)) of chosen layers, averaged over heads.

The authors (generic-diffusion-feature's ``attention=['up_cross']``, VPD's AttentionStore) replace
every attention processor with an explicit softmax. Here only the layers whose maps are requested
run diffusers' explicit ``AttnProcessor`` (with a hook on its probabilities); every other layer
keeps its fused processor (SDPA). Per layer the maps are ``[B, tokens, h, w]`` on the query grid;
layers of one grid are averaged (or kept apart), brought to ``stride`` by nearest upsampling and
concatenated: for SD1.5's default (up-stage cross-attention at 1/32 and 1/16) 2 x 77 = 154 channels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor
from torch import nn

from .taps import Tap, _grid

#: named layer sets: stage prefix, attention ('attn2': cross, 'attn1': self)
LAYER_SETS = {'up_cross': ('up_blocks.', 'attn2'), 'down_cross': ('down_blocks.', 'attn2'),
              'mid_cross': ('mid_block.', 'attn2'), 'up_self': ('up_blocks.', 'attn1')}


class _MapProcessor(AttnProcessor):
    """diffusers' explicit attention that hands its probabilities to ``sink`` on the way."""

    def __init__(self, name: str, sink) -> None:
        super().__init__()
        self.name, self.sink = name, sink

    # eager even inside a compiled block (compile_denoiser): dynamo mistraces the patched method's removal below
    @torch.compiler.disable
    def __call__(self, attn, hidden_states, *args, **kwargs):
        scores = attn.get_attention_scores

        def kept(query, key, attention_mask=None):
            probs = scores(query, key, attention_mask)
            self.sink(self.name, probs, attn.heads)
            return probs

        attn.get_attention_scores = kept
        try:
            return super().__call__(attn, hidden_states, *args, **kwargs)
        finally:
            del attn.get_attention_scores


class CrossAttentionMaps:
    """The attention-map feature of a UNet, as one pseudo-tap.

    Args:
        unet: the (shared) UNet.
        layers: a named set (:data:`LAYER_SETS`, default the authors' ``'up_cross'``) or module names.
        strides: keep the layers whose query grid has one of these strides (relative to the image);
            ``None``: all of the set. Default (32, 16): the authors' 16x16 and 32x32 maps at 512.
        average_layers: average the layers of one stride (the authors') or concatenate them.
        stride: the stride of the output feature map (nearest upsampling).
    """

    name = 'attention_maps'

    def __init__(self, unet: nn.Module, layers: str | Sequence[str] = 'up_cross',
                 strides: Sequence[int] | None = (32, 16), average_layers: bool = True, stride: int = 8) -> None:
        if isinstance(layers, str):
            if layers not in LAYER_SETS:
                raise ValueError(f'attention layers={layers!r}: use one of {sorted(LAYER_SETS)} or a list of '
                                 'attention module names')
            prefix, kind = LAYER_SETS[layers]
            names = [n for n, m in unet.named_modules() if n.startswith(prefix) and n.endswith('.' + kind)
                     and hasattr(m, 'processor')]
        else:
            modules = dict(unet.named_modules())
            bad = [n for n in layers if not hasattr(modules.get(n), 'processor')]
            if bad:
                raise KeyError(f'attention layers {bad} are no attention modules of the UNet '
                               "(e.g. 'up_blocks.1.attentions.0.transformer_blocks.0.attn2')")
            names = list(layers)
        self.unet, self.strides, self.average, self.stride = unet, strides, average_layers, int(stride)
        self.modules = dict(unet.named_modules())
        self.names = names
        self.layer_strides: dict[str, int] = {}
        self.groups: list[list[str]] = []  # output channel groups, set by select()
        self._maps: dict[str, torch.Tensor] = {}
        self._defaults = {n: self.modules[n].processor for n in names}
        for n in names:
            self.modules[n].set_processor(_MapProcessor(n, self._keep))

    def _keep(self, name: str, probs: torch.Tensor, heads: int) -> None:
        self._maps[name] = probs.unflatten(0, (-1, heads)).mean(1)  # [B, queries, tokens]

    def select(self, image_hw: tuple[int, int]) -> Tap:
        """After a probe forward on an SD input of ``image_hw``: keep the layers of the chosen strides
        (the others get their fused processors back) and describe the feature."""
        for name in self.names:
            self.layer_strides[name] = _grid(self._maps[name].shape[1], image_hw)
        kept = [n for n in self.names if self.strides is None or self.layer_strides[n] in self.strides]
        if not kept:
            raise ValueError(f'no attention layer of {self.names[:3]}... has a query grid at strides {self.strides} '
                             f'(they have {sorted(set(self.layer_strides.values()))})')
        for name in set(self.names) - set(kept):
            self.modules[name].set_processor(self._defaults[name])
        self.names = kept
        tokens = self._maps[kept[0]].shape[-1]
        self.groups = self._groups()
        self._maps.clear()
        return Tap(self.name, tokens * len(self.groups), self.stride, tokens=False)

    def _groups(self) -> list[list[str]]:
        """Layers per output group: one group per stride (coarsest first) when averaging, else one each."""
        order = sorted(self.names, key=lambda n: -self.layer_strides[n])
        if not self.average:
            return [[n] for n in order]
        groups: dict[int, list[str]] = {}
        for n in order:
            groups.setdefault(self.layer_strides[n], []).append(n)
        return list(groups.values())

    @property
    def layer_modules(self) -> list[nn.Module]:
        """The attention modules that must run before the maps are complete (for the early exit)."""
        return [self.modules[n] for n in self.names]

    def collect(self, image_hw: tuple[int, int]) -> torch.Tensor:
        """The maps of the last forward as ``[B, groups x tokens, H/stride, W/stride]`` on an SD input of
        ``image_hw``; clears them."""
        out = []
        size = (-(-image_hw[0] // self.stride), -(-image_hw[1] // self.stride))
        for group in self.groups:
            s = self.layer_strides[group[0]]
            grid = (-(-image_hw[0] // s), -(-image_hw[1] // s))
            maps = torch.stack([self._maps[n] for n in group]).mean(0)  # [B, queries, tokens]
            maps = maps.transpose(1, 2).unflatten(2, grid)
            out.append(F.interpolate(maps.float(), size=size, mode='nearest'))
        self._maps.clear()
        return torch.cat(out, dim=1)


__all__ = ['LAYER_SETS', 'CrossAttentionMaps']
