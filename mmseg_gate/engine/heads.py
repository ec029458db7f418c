"""Head and neck channels against the backbone's levels, with the value to set in every message.

Two entry points: :func:`check_head_channels` on a built segmentor (``GATECheckHook``, before the first
iteration) and :func:`check_model_config` on a config before anything is built (``tools/train.py``,
``tools/test.py``, the demo): a swapped-in mmseg config otherwise fails with mmseg's bare
``AssertionError`` at head build (SegFormer: ``len(in_channels) == len(in_index)``) or with a convolution
shape error in the first forward (DeepLabV3+'s ``c1_in_channels``).

The keys checked are those stock mmseg heads read from the backbone (or the neck): ``in_channels`` at
``in_index`` (one value per index; their sum with ``input_transform='resize_concat'``) and
``c1_in_channels`` (DeepLabV3+'s decoder reads level 0). A head's own width (``channels``) is free.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mmengine.model import is_model_wrapper
from torch import nn

#: the backbone's default taps (mmseg_gate.models.backbone.GATE_TAPS), repeated to stay importable without it
_GATE_TAPS = ('up_blocks.0.upsamplers.0', 'up_blocks.1.upsamplers.0', 'up_blocks.2.upsamplers.0')


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class HeadInputs:
    """What a head takes from the levels it is given (a config's values, or a built head's)."""

    name: str                       # as in the config: 'decode_head', 'auxiliary_head[1]'
    in_channels: Any                # int or list
    in_index: Any                   # int or list
    concat: bool = False            # input_transform='resize_concat': one input of the summed channels
    c1_in_channels: int | None = None
    built: bool = False             # a built head: mmseg's own assertions passed (concat heads hold the sum)


def _head_from_module(name: str, head: nn.Module) -> HeadInputs | None:
    if head is None or not hasattr(head, 'in_index'):
        return None
    concat = getattr(head, 'input_transform', None) == 'resize_concat'
    c1 = getattr(head, 'c1_bottleneck', None)  # DepthwiseSeparableASPPHead with c1_in_channels > 0
    c1_in = getattr(getattr(c1, 'conv', c1), 'in_channels', None) if c1 is not None else None
    return HeadInputs(name, head.in_channels, head.in_index, concat, c1_in, built=True)


def _head_from_config(name: str, cfg: dict) -> HeadInputs | None:
    if not isinstance(cfg, dict) or 'in_channels' not in cfg:
        return None
    c1 = cfg.get('c1_in_channels')
    return HeadInputs(name, cfg['in_channels'], cfg.get('in_index', -1), cfg.get('input_transform') == 'resize_concat',
                      c1 if isinstance(c1, int) and c1 > 0 else None)


def _named(key: str, value) -> list[tuple[str, Any]]:
    """``decode_head`` / ``auxiliary_head`` entries: one, or a list (cascades, several auxiliaries)."""
    if isinstance(value, (list, tuple, nn.ModuleList)):
        return [(f'{key}[{i}]', v) for i, v in enumerate(value)]
    return [(key, value)]


def head_problems(head: HeadInputs, out: Sequence[int] | None, levels: int | None, source: str) -> list[str]:
    """What is wrong with ``head`` given ``out`` (the channels of the levels it is given, if known) and
    their count; each problem names the value to set."""
    problems = _input_problems(head, out, levels, source)
    if out is not None and head.c1_in_channels is not None and head.c1_in_channels != out[0]:
        name = f'model.{head.name}'
        problems.append(f'{name}.c1_in_channels={head.c1_in_channels} does not match {source}: the decoder '
                        f'reads level 0, which has {out[0]} channels. Set {name}.c1_in_channels={out[0]}.')
    return problems


def _input_problems(head: HeadInputs, out: Sequence[int] | None, levels: int | None, source: str) -> list[str]:
    """Problems of ``in_channels`` at ``in_index``: their forms, the indices, the channels."""
    name, problems = f'model.{head.name}', []
    channels, index = head.in_channels, head.in_index
    if levels is None and out is not None:
        levels = len(out)
    want_of = (lambda idx: [out[i] for i in idx]) if out is not None else None
    if isinstance(index, (list, tuple)) != isinstance(channels, (list, tuple)) and not (head.built and head.concat):
        if isinstance(index, (list, tuple)):
            fix = f'model.{head.name}.in_channels={want_of(index)}' if want_of and all(
                -len(out) <= i < len(out) for i in index) else f'{name}.in_channels to {len(index)} values'
            problems.append(f'{name}.in_channels={channels} is one number but in_index={list(index)} selects '
                            f'{len(index)} levels: give one channel count per level. Set {fix}.')
        else:
            problems.append(f'{name}.in_channels={list(channels)} is a list but in_index={index} selects one level. '
                            f'Set {name}.in_index={list(range(len(channels)))} (one per value), or one in_channels value.')
        return problems
    idx = _as_list(index)
    if not head.built and isinstance(channels, (list, tuple)) and len(channels) != len(idx):
        fix = (f'Set {name}.in_channels={want_of(idx)} (the channels of {source} at those levels)'
               if want_of and all(-len(out) <= i < len(out) for i in idx)
               else f'Give {name}.in_channels {len(idx)} values, the channels of {source} at those levels')
        problems.append(f'{name}.in_channels={list(channels)} has {len(channels)} values but in_index={idx} '
                        f'selects {len(idx)} levels. {fix}.')
        return problems
    if levels is not None and any(not -levels <= i < levels for i in idx):
        coarsest = f' and {name}.in_channels={out[-1]}' if out is not None and not isinstance(index, list) else ''
        problems.append(f'{name}.in_index={index} but {source} gives only {levels} levels'
                        + (f' (out_channels={list(out)})' if out is not None else '')
                        + f': use indices 0..{levels - 1}, e.g. {name}.in_index={levels - 1}{coarsest} (the coarsest).')
        return problems
    if out is not None:
        want, have = [out[i] for i in idx], _as_list(channels)
        if head.concat:
            want, have = [sum(want)], [sum(have)]
        if want != have:
            fix = want if isinstance(channels, (list, tuple)) and not head.concat else want[0]
            problems.append(f'{name}.in_channels={channels} does not match {source}: out_channels={list(out)} at '
                            f'in_index={index}. Set {name}.in_channels={fix}.')
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ValueError('\n'.join(problems))


def _neck_outputs(neck, out_channels, num_outs) -> list[int] | None:
    """The channels of a neck's outputs when they are one width (FPN, MultiLevelNeck), else ``None``."""
    return [out_channels] * num_outs if isinstance(out_channels, int) and isinstance(num_outs, int) else None


def check_head_channels(segmentor: Any) -> None:
    """Raise if a built segmentor's heads (decode, auxiliary, cascade) or neck disagree with the
    backbone's ``out_channels``: ``in_channels`` at ``in_index``, ``c1_in_channels``; the message names
    the value to set."""
    if is_model_wrapper(segmentor):
        segmentor = segmentor.module
    out = getattr(getattr(segmentor, 'backbone', None), 'out_channels', None)
    if out is None:
        return
    out, source = list(out), 'the backbone'
    neck = getattr(segmentor, 'neck', None)
    if neck is not None:  # e.g. MultiLevelNeck (DiT taps of one stride -> a pyramid): it takes the backbone's levels
        neck_in = getattr(neck, 'in_channels', None)
        if neck_in is not None and _as_list(neck_in) != out:
            _raise([f'model.neck.in_channels={neck_in} does not match the backbone: out_channels={out}. '
                    f'Set model.neck.in_channels={out}.'])
        out = _neck_outputs(neck, getattr(neck, 'out_channels', None), getattr(neck, 'num_outs', None))
        if out is None:
            return  # a neck of unknown output: the heads are not checked
        source = 'the neck'
    heads = [h for key in ('decode_head', 'auxiliary_head') for name, m in _named(key, getattr(segmentor, key, None))
             if (h := _head_from_module(name, m)) is not None]
    _raise([p for h in heads for p in head_problems(h, out, None, source)])


# ----------------------------------------------------------------------------- before the build
def _unet_config(backbone: dict) -> dict | None:
    """The UNet's config.json of a backbone config when it is a local file (no hub access here); an
    ``unet=`` override is a model folder or a pipeline folder, as the backbone reads it."""
    unet = backbone.get('unet')
    folders = [unet, os.path.join(str(unet), 'unet')] if unet else [os.path.join(str(backbone.get('pretrained')), 'unet')]
    for folder in folders:
        file = Path(os.path.expanduser(str(folder))) / 'config.json'
        if file.is_file():
            config = json.loads(file.read_text())
            return config if config.get('_class_name') == 'UNet2DConditionModel' else None
    return None


def _unet_tap(name: str, block_out: Sequence[int]) -> tuple[int, int] | None:
    """(channels, stride relative to the latents) of a whole-module UNet tap, from the config's
    ``block_out_channels``; ``None`` for any other tap (inner layers change the channels)."""
    n, up = len(block_out), list(reversed(block_out))
    m = re.fullmatch(r'(up|down)_blocks\.(\d+)(?:\.(upsamplers|downsamplers|resnets|attentions)\.(\d+))?', name)
    if name == 'mid_block':
        return block_out[-1], 2 ** (n - 1)
    if m is None or int(m.group(2)) >= n:
        return None
    kind, i, part = m.group(1), int(m.group(2)), m.group(3)
    if kind == 'up':  # up block i works at 2^(n-1-i); its upsampler (all but the last block's) halves that
        if part == 'upsamplers' or (part is None and i < n - 1):
            return (up[i], 2 ** (n - 2 - i)) if i < n - 1 else None
        return (up[i], 2 ** (n - 1 - i)) if part in (None, 'resnets', 'attentions') else None
    if part in ('resnets', 'attentions'):  # down block i works at 2^i; a whole down block gives a tuple
        return block_out[i], 2 ** i
    return (block_out[i], 2 ** (i + 1)) if part == 'downsamplers' and i < n - 1 else None


def _amalgamation_out(backbone: dict, levels: int | None) -> list[int] | None:
    amalgamation = backbone.get('amalgamation', {})
    out = amalgamation.get('out_channels') if isinstance(amalgamation, dict) else None
    if isinstance(out, (list, tuple)) and all(isinstance(o, int) for o in out):
        return list(out)
    return [out] * levels if isinstance(out, int) and levels else None


def expected_levels(backbone: dict) -> int | None:
    """How many levels a GATE backbone config gives, without building it (``None``: unknown)."""
    taps = backbone.get('taps', _GATE_TAPS)
    if backbone.get('merge_same_stride', False):
        out = expected_out_channels(backbone)
        return None if out is None else len(out)
    return len(taps) + (backbone.get('attention') is not None)


def expected_out_channels(backbone: dict) -> list[int] | None:
    """A GATE backbone config's ``out_channels`` without loading weights, where the config says them: the
    amalgamation's ``out_channels``, or whole-block UNet taps of a local folder's ``unet/config.json``
    (SD1.x/2.x, SDXL and the tiny twins); ``None`` otherwise (DiTs, attention maps, sub-module taps)."""
    taps = list(backbone.get('taps', _GATE_TAPS))
    merge = backbone.get('merge_same_stride', False)
    given = _amalgamation_out(backbone, None if merge else len(taps) + (backbone.get('attention') is not None))
    if given is not None:
        return given
    config = _unet_config(backbone)
    if config is None or backbone.get('attention') is not None:
        return None
    found = [_unet_tap(t, list(config['block_out_channels'])) for t in taps]
    if any(f is None for f in found):
        return None
    order = sorted(range(len(found)), key=lambda i: found[i][1])  # finest first, ties in tap order
    if not merge:
        return [found[i][0] for i in order]
    per_stride: dict[int, int] = {}
    for i in order:
        per_stride[found[i][1]] = per_stride.get(found[i][1], 0) + found[i][0]
    return list(per_stride.values())


def _is_gate_backbone(backbone) -> bool:
    return isinstance(backbone, dict) and str(backbone.get('type', '')).split('.')[-1] == 'GATEDiffusionBackbone'


def check_model_config(cfg) -> None:
    """Raise before the model is built if its heads or neck disagree with a GATE backbone's levels, as far
    as the config tells them (:func:`expected_out_channels`); the built model is checked again by
    ``GATECheckHook``."""
    model = cfg.get('model') if hasattr(cfg, 'get') else None
    backbone = model.get('backbone') if isinstance(model, dict) else None
    if not _is_gate_backbone(backbone):
        return
    if str((model.get('decode_head') or {}).get('type', '')).split('.')[-1] == 'VPDDepthHead':
        from .depth_checks import check_depth_config
        return check_depth_config(cfg)  # no in_index: a depth head has rules of its own
    out = expected_out_channels(backbone)
    levels, source = (len(out) if out is not None else expected_levels(backbone)), 'the backbone'
    neck = model.get('neck')
    if isinstance(neck, dict):
        neck_in = neck.get('in_channels')
        if out is not None and neck_in is not None and _as_list(neck_in) != out:
            _raise([f'model.neck.in_channels={neck_in} does not match the backbone: out_channels={out}. '
                    f'Set model.neck.in_channels={out}.'])
        num_outs = neck.get('num_outs')
        if num_outs is None and str(neck.get('type', '')).endswith('MultiLevelNeck'):
            num_outs = len(neck.get('scales', (0.5, 1, 2, 4)))
        out, levels, source = _neck_outputs(neck, neck.get('out_channels'), num_outs), num_outs, 'the neck'
    heads = [h for key in ('decode_head', 'auxiliary_head') for name, c in _named(key, model.get(key))
             if (h := _head_from_config(name, c)) is not None]
    _raise([p for h in heads for p in head_problems(h, out, levels, source)])


__all__ = ['HeadInputs', 'head_problems', 'check_head_channels', 'expected_out_channels', 'expected_levels',
           'check_model_config']
