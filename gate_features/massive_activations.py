"""Tokens of diffusion-transformer blocks made usable as features: AdaLN normalisation, dropped channels.

DiT block outputs carry a few channels of huge magnitude ("massive activations"); DiTF (NeurIPS 2025,
arXiv 2505.18584) found FLUX's raw block outputs poor features (SPair PCK 29.9) and good ones after a
LayerNorm without affine followed by the block's own AdaLN modulation ``(1 + scale) x + shift`` under
the block's conditioning (65.3), and after also zeroing two such channels (67.1).

- ``token_norm='adaln'``: per tapped block, the family's :meth:`block_modulation` of its output tokens
  (the conditioning the block was called with is captured by a pre-hook).
- ``drop_channels``: channels zeroed in the tokens before that normalisation and again after it (so
  they neither dominate its statistics nor come back as a shift): a list of indices for every tap, a
  dict ``{tap: [indices]}``, or ``'auto'``: found once at build on a seeded calibration input as the
  channels whose largest magnitude exceeds ``AUTO_RATIO`` times the tap's median magnitude (the
  criterion of Sun et al., "Massive activations in LLMs": ~100x to 1000x the median).

Random weights have no massive activations: the defaults are unvalidated on real weights.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import torch
from torch import nn

#: 'auto' drops channels whose max |x| exceeds this many times the tap's median |x|
AUTO_RATIO = 100.0
#: the block kwargs AdaLN modulation needs (MMDiT/FLUX: ``temb``; PixArt: ``timestep``)
_CONDITIONING = ('temb', 'timestep')


def check_drop_channels(drop_channels) -> None:
    """Fail for a ``drop_channels`` that is neither ``None``, ``'auto'``, channel indices nor ``{tap: indices}``
    (the indices are checked against each tap's channels by :meth:`TokenNormalizer.calibrate`)."""
    if drop_channels is None or drop_channels == 'auto':
        return
    fix = ("give channel indices for every tap (e.g. drop_channels=[3, 17]), {tap: indices} (e.g. "
           "{'transformer_blocks.1': [3]}), or 'auto' (the channels over 100x the tap's median magnitude)")
    if isinstance(drop_channels, str):
        raise ValueError(f'drop_channels={drop_channels!r}: {fix}')
    groups = drop_channels.values() if isinstance(drop_channels, dict) else [drop_channels]
    for group in groups:
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence) or not all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in group):
            raise TypeError(f'drop_channels={drop_channels!r}: {fix}; indices are ints >= 0')


def massive_channels(tokens: torch.Tensor, ratio: float = AUTO_RATIO) -> list[int]:
    """Channels of ``tokens`` ``[B, N, C]`` whose largest magnitude is over ``ratio`` x the median one."""
    magnitude = tokens.detach().float().abs()
    median = magnitude.median().clamp_min(torch.finfo(torch.float32).tiny)
    peak = magnitude.flatten(0, -2).amax(dim=0)
    return [int(i) for i in torch.nonzero(peak > ratio * median).flatten()]


class TokenNormalizer:
    """Applies ``token_norm`` and ``drop_channels`` to the tokens of tapped blocks.

    Args:
        family: the model family (its ``block_modulation``).
        names, modules: the taps (names and modules, in the backbone's order).
        token_norm: ``None`` or ``'adaln'``.
        drop_channels: ``None``, indices for every tap, ``{tap name: indices}`` or ``'auto'``
            (then :meth:`calibrate` must run before the first use).
    """

    def __init__(self, family, names: Sequence[str], modules: Sequence[nn.Module], token_norm: str | None = None,
                 drop_channels: str | Sequence[int] | dict | None = None) -> None:
        if token_norm not in (None, 'adaln'):
            raise ValueError(f"token_norm={token_norm!r}: use None or 'adaln' (LayerNorm without affine + the "
                             "block's own AdaLN modulation)")
        check_drop_channels(drop_channels)
        if token_norm:
            family.check_token_norm_taps(dict(zip(names, modules)))
        self.family, self.names, self.modules, self.token_norm = family, list(names), list(modules), token_norm
        self.auto = drop_channels == 'auto'
        if drop_channels is None or self.auto:
            self.drop: dict[str, list[int]] = {n: [] for n in self.names}
        elif isinstance(drop_channels, dict):
            unknown = set(drop_channels) - set(self.names)
            if unknown:
                raise ValueError(f'drop_channels names {sorted(unknown)}, which are not taps ({self.names})')
            self.drop = {n: sorted(map(int, drop_channels.get(n, ()))) for n in self.names}
        else:
            self.drop = {n: sorted(map(int, drop_channels)) for n in self.names}
        self._conditioning: dict[int, dict] = {}
        self._handles = []
        if token_norm:
            for i, module in enumerate(self.modules):
                self._handles.append(module.register_forward_pre_hook(self._capture(i), with_kwargs=True))

    @property
    def active(self) -> bool:
        return bool(self.token_norm) or self.auto or any(self.drop.values())

    def _capture(self, index: int):
        def hook(module, args, kwargs):
            self._conditioning[index] = {k: kwargs[k] for k in _CONDITIONING if k in kwargs}
        return hook

    def calibrate(self, outs: Sequence[torch.Tensor]) -> None:
        """On the build's probe outputs: ``'auto'`` chooses each tap's channels from its tokens; given indices
        are checked against each tap's channels (a bad one would only fail at the first forward)."""
        if self.auto:
            self.drop = {n: massive_channels(t) if t.ndim == 3 else [] for n, t in zip(self.names, outs)}
        for name, out in zip(self.names, outs):
            self._check_indices(name, out)

    def _check_indices(self, name: str, out: torch.Tensor) -> None:
        drop = self.drop[name]
        if not drop:
            return
        if out.ndim != 3:
            raise ValueError(f'drop_channels={drop} on tap {name!r}: it gives {tuple(out.shape)}, not the [B, N, C] '
                             "tokens of a transformer block: tap a block or leave drop_channels out for it")
        if drop[-1] >= out.shape[-1]:
            raise ValueError(f'drop_channels={drop} on tap {name!r}: it has {out.shape[-1]} channels: give indices in '
                             f'0..{out.shape[-1] - 1}')

    def __call__(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """Tap ``index``'s tokens ``[B, N, C]`` as documented above (unchanged when nothing applies)."""
        drop = self.drop[self.names[index]]
        if drop:
            tokens = tokens.clone()
            tokens[..., drop] = 0
        if self.token_norm:
            if tokens.ndim != 3:
                raise ValueError(f"token_norm='adaln' applies to transformer blocks' tokens; tap "
                                 f'{self.names[index]!r} gives {tuple(tokens.shape)}')
            tokens = self.family.block_modulation(self.modules[index], tokens, self._conditioning[index])
            if drop:
                tokens[..., drop] = 0
        return tokens

    def provenance(self) -> dict | None:
        """What checkpoints record (the channels 'auto' found included)."""
        if not self.active:
            return None
        return dict(token_norm=self.token_norm, drop_channels={n: c for n, c in self.drop.items() if c},
                    auto=self.auto)


__all__ = ['AUTO_RATIO', 'check_drop_channels', 'massive_channels', 'TokenNormalizer']
