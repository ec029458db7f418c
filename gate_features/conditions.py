"""Control images made from the input batch itself, on its own device.

The reference code ran OpenCV Canny per image on the CPU after converting tensors to PIL;
here the whole batch stays on the accelerator. ``canny`` follows ``cv2.Canny`` (3x3 Sobel,
L1 magnitude, max over colour channels, 4-direction non-maximum suppression, 8-connected
hysteresis), which is how the paper's ControlNet (lllyasviel/sd-controlnet-canny) was trained.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

_TAN_22_5 = math.tan(math.radians(22.5))
_TAN_67_5 = math.tan(math.radians(67.5))


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x[..., i + dy, j + dx] with zeros outside (so borders never count as local maxima)."""
    padded = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


@torch.no_grad()
def canny(pixels: torch.Tensor, low_threshold: float = 100, high_threshold: float = 200,
          max_hysteresis_iters: int | None = None) -> torch.Tensor:
    """Canny edges of a batch of images.

    Args:
        pixels: ``[B, C, H, W]`` in the 0..255 range (any float dtype, any device).
        low_threshold, high_threshold: hysteresis thresholds on the L1 gradient magnitude, as in
            ``cv2.Canny(img, low_threshold, high_threshold)``.
        max_hysteresis_iters: safety bound on edge-growing steps; growing stops as soon as nothing
            changes (default ``H * W``: the longest possible chain, so winding weak edges such as a
            spiral are followed to their end, as OpenCV's stack-based hysteresis does).

    Returns:
        ``[B, 3, H, W]`` float32 in {0, 1}: the edge map repeated over three channels, the control
        image format of diffusers' Canny ControlNet examples.
    """
    if low_threshold > high_threshold:
        low_threshold, high_threshold = high_threshold, low_threshold
    x = pixels.float().round().clamp(0, 255)
    b, c, h, w = x.shape
    kx = torch.tensor([[-1., 0., 1.], [-2., 0., 2.], [-1., 0., 1.]], device=x.device)
    kernels = torch.stack([kx, kx.t()])[:, None]                     # [2, 1, 3, 3]
    grads = F.conv2d(F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode='replicate'), kernels)
    grads = grads.reshape(b, c, 2, h, w)
    mag = grads.abs().sum(2)                                         # L1 magnitude per channel
    best = mag.argmax(1, keepdim=True)                               # OpenCV keeps the strongest channel
    mag = mag.gather(1, best)                                        # [B, 1, H, W]
    gx = grads[:, :, 0].gather(1, best)
    gy = grads[:, :, 1].gather(1, best)
    ax, ay = gx.abs(), gy.abs()

    horizontal = ay < ax * _TAN_22_5
    vertical = ay > ax * _TAN_67_5
    same_sign = (gx * gy) >= 0
    # neighbours along the gradient direction; ties broken as OpenCV does (strict '>' before, '>=' after)
    keep_h = (mag > _shift(mag, 0, -1)) & (mag >= _shift(mag, 0, 1))
    keep_v = (mag > _shift(mag, -1, 0)) & (mag >= _shift(mag, 1, 0))
    keep_d1 = (mag > _shift(mag, -1, -1)) & (mag > _shift(mag, 1, 1))   # gx, gy same sign
    keep_d2 = (mag > _shift(mag, -1, 1)) & (mag > _shift(mag, 1, -1))
    keep_d = torch.where(same_sign, keep_d1, keep_d2)
    local_max = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d))
    candidate = local_max & (mag > low_threshold)
    edges = candidate & (mag > high_threshold)

    weak = candidate.float()
    grown = edges.float()
    iters = max_hysteresis_iters or (h * w)
    for step in range(iters):
        nxt = F.max_pool2d(grown, 3, stride=1, padding=1) * weak
        if step % 8 == 7 and torch.equal(nxt, grown):  # checked every 8 steps: the check costs a sync
            break
        grown = nxt
    return grown.expand(b, 3, h, w).contiguous()


def rgb_image(pixels: torch.Tensor) -> torch.Tensor:
    """The input itself in [0, 1] (for tile/shuffle-style ControlNets that take the image)."""
    return (pixels.float() / 255.0).clamp(0, 1)


#: condition type -> function(pixels 0..255 [B,3,H,W], **cfg) -> control image [B,3,H,W] in [0,1]
CONDITIONS: dict[str, Callable[..., torch.Tensor]] = {'canny': canny, 'image': rgb_image}


def build_condition(condition: str, pixels: torch.Tensor, **cfg) -> torch.Tensor:
    """Make the control image ``condition`` from 0..255 pixels."""
    if condition not in CONDITIONS:
        raise ValueError(f'unknown condition type {condition!r}: use one of {sorted(CONDITIONS)} '
                         f'(or register a function in mmseg_gate.models.conditions.CONDITIONS)')
    return CONDITIONS[condition](pixels, **cfg)
