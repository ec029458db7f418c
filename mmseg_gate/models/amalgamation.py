"""Per-level fusion of branch features: refine each branch -> weigh per channel -> sum -> refine.

Two kinds of refiner:

- ``'bias'`` (default, the paper's *effective* model): the authors' refiners are residual blocks
  whose every layer starts at zero, and ``[block] * n`` repeats one block; with zero weights only
  the last BatchNorm's bias ever receives a gradient, so ``n`` blocks compute ``x + n * b``. That is
  what produced the paper's numbers, and :class:`BiasRefiner` computes exactly it (same parameter,
  same optimiser dynamics), without the dead convolutions.
- ``'bottleneck'`` (our variant, unvalidated on real data): learnable residual blocks
  x + conv1x1(conv3x3(conv1x1(x))) whose last convolution starts small, not zero.

The weight assigner is shared by all branches of a level (the authors': one scorer applied to
each branch, softmax over branches) unless ``shared_assigner=False``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule
from torch import nn

REFINERS = ('bias', 'bottleneck')


class BiasRefiner(nn.Module):
    """``x + repeats * b`` with a learned per-channel ``b`` (starts at zero): what ``repeats``
    copies of the authors' zero-initialised residual block compute."""

    def __init__(self, channels: int, repeats: int) -> None:
        super().__init__()
        self.repeats = repeats
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.repeats * self.bias.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f'channels={self.bias.numel()}, repeats={self.repeats}'


class ResidualRefiner(nn.Module):
    """x + conv1x1(conv3x3(conv1x1(x))) with a bottleneck of ``hidden`` channels."""

    def __init__(self, channels: int, hidden: int, norm_cfg: dict, init_scale: float = 1e-2) -> None:
        super().__init__()
        self.reduce = ConvModule(channels, hidden, 1, norm_cfg=norm_cfg)
        self.mix = ConvModule(hidden, hidden, 3, padding=1, norm_cfg=norm_cfg)
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.init_scale = init_scale
        self.reset_last()

    def reset_last(self) -> None:
        nn.init.normal_(self.expand.weight, std=self.init_scale / self.expand.in_channels ** 0.5)
        nn.init.zeros_(self.expand.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(self.mix(self.reduce(x)))


class WeightAssigner(nn.Module):
    """Scores one branch per channel: conv3x3 (no bias) -> ReLU -> BN -> dropout -> global pool ->
    linear, as the authors' (PyTorch's default initialisation)."""

    def __init__(self, channels: int, hidden: int, norm_cfg: dict, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 3, padding=1, bias=False)
        self.norm = build_norm_layer(norm_cfg, hidden)[1]
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.norm(torch.relu(self.conv(x))))
        return self.score(hidden.mean((2, 3)))  # [B, C]


def build_refiner(kind: str, channels: int, hidden: int, blocks: int, norm_cfg: dict) -> nn.Module:
    if kind == 'bias':
        return BiasRefiner(channels, blocks) if blocks else nn.Identity()
    return nn.Sequential(*[ResidualRefiner(channels, hidden, norm_cfg) for _ in range(blocks)])


class LevelAmalgamation(nn.Module):
    def __init__(self, channels: int, num_branches: int, hidden: int, refine_blocks: int, fuse_blocks: int,
                 norm_cfg: dict, dropout: float, out_channels: int | None, refiner: str = 'bias',
                 shared_assigner: bool = True) -> None:
        super().__init__()
        self.refiners = nn.ModuleList(build_refiner(refiner, channels, hidden, refine_blocks, norm_cfg)
                                      for _ in range(num_branches))
        # shared: one module called once per branch (its BatchNorm sees each branch on its own, as theirs)
        self.assigners = nn.ModuleList(WeightAssigner(channels, hidden, norm_cfg, dropout)
                                       for _ in range(1 if shared_assigner else num_branches))
        self.fuse = build_refiner(refiner, channels, hidden, fuse_blocks, norm_cfg)
        self.project = (ConvModule(channels, out_channels, 1, norm_cfg=norm_cfg)
                        if out_channels and out_channels != channels else nn.Identity())
        self.last_weights: torch.Tensor | None = None  # [B, N, C] softmax weights, for inspection

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        refined = [r(f) for r, f in zip(self.refiners, feats)]
        scores = torch.stack([self.assigners[i % len(self.assigners)](f) for i, f in enumerate(refined)], 1)
        weights = scores.softmax(1)
        self.last_weights = weights.detach()
        fused = (torch.stack(refined, 1) * weights[..., None, None]).sum(1)
        return self.project(self.fuse(fused))


class Amalgamation(BaseModule):
    """One :class:`LevelAmalgamation` per feature level.

    The defaults are the authors' effective model (see the module docstring).

    Args:
        in_channels: channels of each level (as the taps give them).
        num_branches: how many branches feed every level.
        refiner: ``'bias'`` (the authors' effective refiner, x + n*b) or ``'bottleneck'`` (learnable
            residual blocks; our unvalidated variant, ``configs/gate_plus/``).
        hidden_channels: width of the weight assigners (and of the bottleneck refiners).
        refine_blocks: residual blocks per branch before weighting.
        fuse_blocks: residual blocks after the weighted sum.
        shared_assigner: one weight assigner per level for all branches (the authors'), or one each.
        out_channels: optional per-level output channels (1x1 projection); ``None`` keeps ``in_channels``.
        norm_cfg: mmcv norm config (``SyncBN`` for multi-GPU training).
        dropout: dropout in the weight assigners (the authors' ``nn.Dropout()``: 0.5).
    """

    def __init__(self, in_channels: Sequence[int], num_branches: int, refiner: str = 'bias',
                 hidden_channels: int = 128, refine_blocks: int = 4, fuse_blocks: int = 2,
                 shared_assigner: bool = True, out_channels: int | Sequence[int] | None = None,
                 norm_cfg: dict | None = None, dropout: float = 0.5, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        if refiner not in REFINERS:
            raise ValueError(f'amalgamation refiner={refiner!r}: use one of {REFINERS}')
        norm_cfg = norm_cfg or dict(type='BN', requires_grad=True)
        if out_channels is None or isinstance(out_channels, int):
            out_channels = [out_channels] * len(in_channels)
        if len(out_channels) != len(in_channels):
            raise ValueError(f'amalgamation out_channels={list(out_channels)} must give one value per level '
                             f'({len(in_channels)} levels)')
        self.levels = nn.ModuleList(
            LevelAmalgamation(c, num_branches, hidden_channels, refine_blocks, fuse_blocks, norm_cfg, dropout, o,
                              refiner, shared_assigner)
            for c, o in zip(in_channels, out_channels))
        self.out_channels = [o or c for c, o in zip(in_channels, out_channels)]

    def init_weights(self) -> None:
        super().init_weights()
        for m in self.modules():  # keep the near-identity start whatever init_cfg did
            if isinstance(m, ResidualRefiner):
                m.reset_last()

    def forward(self, per_level: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        """``per_level[level][branch]`` -> one fused map per level."""
        return [amalg(feats) for amalg, feats in zip(self.levels, per_level)]
