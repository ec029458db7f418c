"""What SD sees of an input: normalisation undone, optional resize, padding; and the way back.

Image sides must be multiples of the UNet's total down-sampling (64 for SD1/2, 32 for SDXL) for its
skip connections to line up: inputs are padded (replicate) and the features cropped back to the
input's 1/stride grid. ``scale`` resizes for SD first, keeping the aspect ratio (the paper's
Cityscapes crops of 1024 -> 512), and the features are interpolated back.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sd_size(h: int, w: int, scale: float | None) -> tuple[int, int]:
    """The size SD sees of an ``h x w`` input, before padding."""
    if scale is None:
        return h, w
    return max(1, round(h * scale)), max(1, round(w * scale))


def prepare_images(img: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scale: float | None,
                   pad_multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised input -> (SD input in [-1, 1], 0..255 pixels for the control images), resized by
    ``scale`` if set and padded to a multiple of ``pad_multiple``."""
    if img.ndim == 3:
        raise ValueError(f'GATEDiffusionBackbone expects a batch [B, 3, H, W], got one image of shape '
                         f'{tuple(img.shape)}: add the batch dimension, e.g. img.unsqueeze(0)')
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f'GATEDiffusionBackbone expects [B, 3, H, W] RGB images, got shape '
                         f'{tuple(img.shape)}; convert grey/RGBA inputs to 3 channels in the pipeline')
    pixels = img.float() * std + mean
    x = pixels / 127.5 - 1.0
    size = sd_size(*pixels.shape[-2:], scale)
    if size != tuple(pixels.shape[-2:]):
        x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)  # the authors' SD input
        # their control images: PIL's (antialiased bicubic) resize of the uint8 image
        pixels = F.interpolate(pixels.round().clamp(0, 255), size=size, mode='bicubic', align_corners=False,
                               antialias=True).round().clamp(0, 255)
    pad = (0, -size[1] % pad_multiple, 0, -size[0] % pad_multiple)
    if any(pad):
        x, pixels = F.pad(x, pad, mode='replicate'), F.pad(pixels, pad, mode='replicate')
    return x, pixels


def to_input_grid(feat: torch.Tensor, h: int, w: int, stride: int, scale: float | None) -> torch.Tensor:
    """Crop the padding off; after a resize, interpolate back to the input's 1/stride grid."""
    sd_h, sd_w = sd_size(h, w, scale)
    feat = feat[..., :math.ceil(sd_h / stride), :math.ceil(sd_w / stride)]
    size = (math.ceil(h / stride), math.ceil(w / stride))
    if tuple(feat.shape[-2:]) != size:
        feat = F.interpolate(feat, size=size, mode='bilinear', align_corners=False)
    return feat


__all__ = ['sd_size', 'prepare_images', 'to_input_grid']
