"""``pyramid='vpd'``: the four levels mmseg's ``VPDDepthHead`` expects, aligned with the input.

``VPDDepthHead`` (VPD's depth head in mmseg 1.x) takes levels at strides 8, 16, 32 and 64, brings them to
the 1/32 grid (the 1/8 and 1/16 levels through strided convolutions, the 1/64 level upsampled x2), cuts
``fmap_border`` cells off the bottom and right of that grid and upsamples x32. VPD's own backbone pads its
480 crops to 512 and returns the padded grid, so ``fmap_border=(1, 1)`` removes exactly the padding.
The default geometry of :class:`GATEDiffusionBackbone` (features cropped to ``ceil(H / s)``) breaks that:
480 crops give 15 cells at 1/32 but 8 at 1/64 (the head fails on the concatenation), and 128 crops with
``fmap_border=(1, 1)`` train without a word while the head drops a real row and column of features.

Here the input is padded (bottom and right) to a multiple of 64 and the levels keep the padded grid; an
input whose padding is not exactly ``fmap_border`` cells of 32 pixels is refused, since the head would
drop real features or keep padding and its depth map would be shifted against the labels. A 1/64 level
the taps lack (SDXL's UNet ends at 1/32) is the 2x2 average of the 1/32 level; diffusion-transformer
taps (all 1/16) get their pyramid from mmseg's ``MultiLevelNeck`` (``scales=[2, 1, 0.5, 0.25]``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

#: the strides VPDDepthHead's forward assumes, finest first
VPD_STRIDES = (8, 16, 32, 64)
#: SD1.x/2.x: VPD's own taps (LDM ``output_blocks`` 1, 4 and 7, and the last up block's output) in diffusers
#: names: 1280 channels at 1/64, 1280 at 1/32, 640 at 1/16, 320 at 1/8 for SD1.5 (``[320, 640, 1280, 1280]``)
VPD_TAPS = ('up_blocks.0.resnets.1', 'up_blocks.1.attentions.1', 'up_blocks.2.attentions.1', 'up_blocks.3')
#: SDXL: the same places of its three up blocks (1280 at 1/32, 640 at 1/16, 320 at 1/8); 1/64 is pooled
SDXL_VPD_TAPS = ('up_blocks.0.attentions.1', 'up_blocks.1.attentions.1', 'up_blocks.2')
#: the grid VPDDepthHead cuts ``fmap_border`` from (its aggregation grid)
HEAD_STRIDE = 32
#: the padding multiple that keeps the 1/64 level exactly half of the 1/32 grid
MULTIPLE = 64


def _border(value) -> tuple[int, int]:
    border = (value, value) if isinstance(value, int) else tuple(value)
    if len(border) != 2 or not all(isinstance(b, int) and b >= 0 for b in border):
        raise ValueError(f'pyramid fmap_border={value!r}: give the head\'s fmap_border, an int or (rows, columns) '
                         '>= 0, e.g. (1, 1) for 480 crops (VPD\'s)')
    return border


@dataclass(frozen=True)
class VPDPyramid:
    """The geometry and levels of ``pyramid='vpd'``.

    Args:
        fmap_border: the head's ``fmap_border`` (rows, columns of the 1/32 grid it cuts off): every input
            must be padded by exactly that much, ``(1, 1)`` for crops whose sides are odd multiples of 32
            (96, 160, 480: VPD's 480 config), ``(0, 0)`` for even ones (128, 512: VPD's 512 config).
    """

    fmap_border: tuple[int, int] = (1, 1)

    @classmethod
    def build(cls, cfg: str | dict | None) -> 'VPDPyramid | None':
        """``None``, ``'vpd'`` (``fmap_border=(1, 1)``) or ``dict(type='vpd', fmap_border=...)``."""
        if cfg is None:
            return None
        if cfg == 'vpd':
            return cls()
        if isinstance(cfg, dict) and cfg.get('type', 'vpd') == 'vpd' and set(cfg) <= {'type', 'fmap_border'}:
            return cls(_border(cfg.get('fmap_border', (1, 1))))
        raise ValueError(f'pyramid={cfg!r}: use None, \'vpd\' or dict(type=\'vpd\', fmap_border=(1, 1)) (the four '
                         'levels of mmseg\'s VPDDepthHead; fmap_border as the head\'s)')

    def pad_multiple(self, family_multiple: int) -> int:
        """What inputs are padded to: a multiple of 64 and of the family's own multiple."""
        return math.lcm(MULTIPLE, family_multiple)

    def check_input(self, h: int, w: int) -> None:
        """Refuse an input the head would misalign: sides not multiples of 32, or padded by other than
        ``fmap_border`` cells of 32."""
        if h % HEAD_STRIDE or w % HEAD_STRIDE:
            raise ValueError(
                f'pyramid=\'vpd\': input {h}x{w} is not a multiple of {HEAD_STRIDE}, so VPDDepthHead\'s 1/32 cells '
                f'would straddle the image border and its depth map would be shifted against the labels. Use crops '
                f'(data_preprocessor size, test_cfg crop_size) whose sides are multiples of {HEAD_STRIDE}: VPD\'s '
                f'480x480 with fmap_border=(1, 1), 512x512 with (0, 0).')
        need = ((-h % MULTIPLE) // HEAD_STRIDE, (-w % MULTIPLE) // HEAD_STRIDE)
        if need != self.fmap_border:
            what = []
            for side, have, want in (('row', self.fmap_border[0], need[0]), ('column', self.fmap_border[1], need[1])):
                if have > want:
                    what.append(f'drop {have - want} real {side}(s) of features')
                elif have < want:
                    what.append(f'keep {want - have} {side}(s) of padding')
            raise ValueError(
                f'pyramid=\'vpd\': input {h}x{w} is padded to {h + need[0] * HEAD_STRIDE}x{w + need[1] * HEAD_STRIDE} '
                f'(a multiple of {MULTIPLE}), which puts {need} padding cells on the 1/{HEAD_STRIDE} grid, but '
                f'fmap_border={self.fmap_border}: the head would {" and ".join(what)}, so its depth map would be '
                f'shifted against the labels. Set fmap_border={need} in both model.decode_head and '
                f'model.backbone.pyramid, or use crops whose sides divided by {HEAD_STRIDE} are odd for (1, 1) '
                f'(96, 160, 480) and even for (0, 0) (128, 512); test with test_cfg mode=\'slide_flip\' and that '
                f'crop_size (VPD\'s), not whole images of another size.')

    @staticmethod
    def grid(h: int, w: int) -> tuple[int, int]:
        """The padded size whose 1/s grids the levels keep."""
        return h + -h % MULTIPLE, w + -w % MULTIPLE

    @staticmethod
    def plan(out_channels: Sequence[int], strides: Sequence[int]) -> tuple[list[int], list[int]]:
        """``(out_channels, strides)`` with the levels :meth:`extend` adds: a missing 1/64 level pooled from
        1/32. Taps that all share one stride (diffusion transformers) are left to a ``MultiLevelNeck``."""
        strides = list(strides)
        if len(set(strides)) == 1 and strides[0] not in (VPD_STRIDES[0], VPD_STRIDES[-1]):
            return list(out_channels), strides  # DiTs: MultiLevelNeck makes the pyramid
        if strides == list(VPD_STRIDES[:3]):
            return [*out_channels, out_channels[-1]], [*strides, VPD_STRIDES[-1]]
        if strides != list(VPD_STRIDES):
            raise ValueError(
                f'pyramid=\'vpd\' needs one level at each of the strides {list(VPD_STRIDES)} (a missing 1/64 is '
                f'pooled from 1/32), but the taps give strides {strides}: use taps=VPD_TAPS (SD1.x/2.x), '
                f'SDXL_VPD_TAPS (SDXL), from mmseg_gate.models.pyramid, or diffusion-transformer taps of one stride '
                f'with a MultiLevelNeck (scales=[2, 1, 0.5, 0.25])')
        return list(out_channels), strides

    @staticmethod
    def extend(levels: list[torch.Tensor], strides: Sequence[int]) -> list[torch.Tensor]:
        """The levels with those :meth:`plan` added (``strides``: the planned ones)."""
        if len(levels) == len(strides):
            return levels
        return [*levels, F.avg_pool2d(levels[-1], 2)]  # the 1/32 grid is even: the input is padded to 64


__all__ = ['VPDPyramid', 'VPD_STRIDES', 'VPD_TAPS', 'SDXL_VPD_TAPS', 'HEAD_STRIDE']
