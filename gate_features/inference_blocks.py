"""Inference-only variant of diffusers' ResnetBlock2D: same arithmetic, fewer full-size temporaries.

The frozen VAE encoder runs its first resnets at full image resolution, where one activation of
SD's VAE is 128 MB per 512x512 image. diffusers' ``ResnetBlock2D`` allocates a new tensor for each
activation and two for the residual sum (``(x + h) / output_scale_factor``), and the encoder's loop
still holds the block's input while it runs: four to five full-size tensors are alive at its end.
Computed in place, with the sum written into the input, three are; the latents are bit-identical
and the encoder is ~10 % faster on a CPU (fewer fresh pages to fault in).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from torch import nn


class InplaceResnetBlock2D(ResnetBlock2D):
    """``ResnetBlock2D`` whose gradient-free forward reuses its temporaries and **overwrites its input**.

    Only for blocks whose callers do not use a block's input after the block, as in the VAE
    encoder (no skip connections; not the UNet). Falls back to diffusers' forward whenever in-place
    work could change the result: with gradients, a time embedding, an up/down-sampling resnet or
    an activation other than SiLU.
    """

    def _can_run_inplace(self, temb: torch.Tensor | None) -> bool:
        return (not torch.is_grad_enabled() and temb is None and self.upsample is None
                and self.downsample is None and self.time_embedding_norm == 'default'
                and isinstance(self.nonlinearity, nn.SiLU))

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if not self._can_run_inplace(temb):
            return super().forward(input_tensor, temb, *args, **kwargs)
        # one statement per step, so that each step's input is freed before the next allocates
        hidden = F.silu(self.norm1(input_tensor), inplace=True)
        hidden = self.conv1(hidden)
        hidden = F.silu(self.norm2(hidden), inplace=True)
        hidden = self.conv2(self.dropout(hidden))
        if self.conv_shortcut is None:
            out = input_tensor.add_(hidden)  # x + h (== h + x bit for bit), written where x was
        else:
            out = hidden.add_(self.conv_shortcut(input_tensor))
        if self.output_scale_factor != 1:
            out /= self.output_scale_factor
        return out


def use_inplace_resnets(module: nn.Module) -> int:
    """Turn every ``ResnetBlock2D`` of ``module`` into :class:`InplaceResnetBlock2D`.

    ``module`` must be frozen and must not reuse a resnet's input after it (the VAE encoder).

    Only the class changes (no new parameters, same state-dict keys). Returns how many were changed.
    """
    blocks = [m for m in module.modules() if type(m) is ResnetBlock2D]
    for block in blocks:
        block.__class__ = InplaceResnetBlock2D
    return len(blocks)


def chunk_feed_forward(model: nn.Module, chunks: int, min_tokens: int = 1024, exclude=frozenset()) -> list:
    """Run the feed-forward of every transformer block that sees at least ``min_tokens`` tokens in
    ``chunks`` pieces along the tokens (diffusers' ``set_chunk_feed_forward``, sized per call).

    Why: a GEGLU feed-forward widens the tokens 8x; at SD's 1/8 level and with the branches batched,
    that one tensor is the UNet's largest (126 MB for 3 branches at 512x512). Chunks along the
    tokens keep the whole batch together, so peft's per-sample adapters still apply. Blocks in
    ``exclude`` keep whole feed-forwards. Returns the hook handles (none for ``chunks=1``: nothing to
    size on every call).
    """
    if chunks <= 1:
        return []

    def size_chunks(block, args, kwargs):
        hidden = args[0] if args else kwargs['hidden_states']
        tokens = hidden.shape[1] if hidden.ndim == 3 else 0
        use = tokens >= min_tokens and tokens % chunks == 0
        block.set_chunk_feed_forward(tokens // chunks if use else None, dim=1)

    return [m.register_forward_pre_hook(size_chunks, with_kwargs=True) for m in model.modules()
            if hasattr(m, 'set_chunk_feed_forward') and hasattr(m, 'ff') and m not in exclude]
