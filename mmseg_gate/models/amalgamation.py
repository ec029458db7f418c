"""Per-level fusion of branch features: refine each branch -> weigh per channel -> sum -> refine.

Unlike the reference code, every refiner block is its own module (no ``[block] * n`` sharing),
and only the last convolution of each residual block starts small (not zero), so a block starts
near the identity while every layer receives gradients from the first step.
"""
from __future__ import annotations

from typing import Sequence

import torch
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from torch import nn


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
    """Scores one branch per channel: conv3x3 -> ReLU -> BN -> dropout -> global pool -> linear."""

    def __init__(self, channels: int, hidden: int, norm_cfg: dict, dropout: float) -> None:
        super().__init__()
        self.conv = ConvModule(channels, hidden, 3, padding=1, norm_cfg=norm_cfg, order=('conv', 'act', 'norm'))
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden, channels)
        nn.init.normal_(self.score.weight, std=0.01)  # near-uniform branch weights at the start
        nn.init.zeros_(self.score.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.dropout(self.conv(x)).mean((2, 3)))  # [B, C]


class LevelAmalgamation(nn.Module):
    def __init__(self, channels: int, num_branches: int, hidden: int, refine_blocks: int, fuse_blocks: int,
                 norm_cfg: dict, dropout: float, out_channels: int | None) -> None:
        super().__init__()
        self.refiners = nn.ModuleList(
            nn.Sequential(*[ResidualRefiner(channels, hidden, norm_cfg) for _ in range(refine_blocks)])
            for _ in range(num_branches))
        self.assigners = nn.ModuleList(WeightAssigner(channels, hidden, norm_cfg, dropout)
                                       for _ in range(num_branches))
        self.fuse = nn.Sequential(*[ResidualRefiner(channels, hidden, norm_cfg) for _ in range(fuse_blocks)])
        self.project = (ConvModule(channels, out_channels, 1, norm_cfg=norm_cfg)
                        if out_channels and out_channels != channels else nn.Identity())
        self.last_weights: torch.Tensor | None = None  # [B, N, C] softmax weights, for inspection

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        refined = [r(f) for r, f in zip(self.refiners, feats)]
        scores = torch.stack([a(f) for a, f in zip(self.assigners, refined)], 1)   # [B, N, C]
        weights = scores.softmax(1)
        self.last_weights = weights.detach()
        fused = (torch.stack(refined, 1) * weights[..., None, None]).sum(1)
        return self.project(self.fuse(fused))


class Amalgamation(BaseModule):
    """One :class:`LevelAmalgamation` per feature level.

    Args:
        in_channels: channels of each level (as the taps give them).
        num_branches: how many branches feed every level.
        hidden_channels: bottleneck width of refiners and weight assigners.
        refine_blocks: residual blocks per branch before weighting.
        fuse_blocks: residual blocks after the weighted sum.
        out_channels: optional per-level output channels (1x1 projection); ``None`` keeps ``in_channels``.
        norm_cfg: mmcv norm config (``SyncBN`` for multi-GPU training).
        dropout: dropout in the weight assigners.
    """

    def __init__(self, in_channels: Sequence[int], num_branches: int, hidden_channels: int = 128,
                 refine_blocks: int = 4, fuse_blocks: int = 2, out_channels: int | Sequence[int] | None = None,
                 norm_cfg: dict | None = None, dropout: float = 0.1, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        norm_cfg = norm_cfg or dict(type='BN', requires_grad=True)
        if out_channels is None or isinstance(out_channels, int):
            out_channels = [out_channels] * len(in_channels)
        if len(out_channels) != len(in_channels):
            raise ValueError(f'amalgamation out_channels={list(out_channels)} must give one value per level '
                             f'({len(in_channels)} levels)')
        self.levels = nn.ModuleList(
            LevelAmalgamation(c, num_branches, hidden_channels, refine_blocks, fuse_blocks, norm_cfg, dropout, o)
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
