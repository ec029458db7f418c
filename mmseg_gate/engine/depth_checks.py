"""mmseg's ``VPDDepthHead`` against the levels it is given, with the value to set in every message.

``VPDDepthHead`` has no ``in_index`` (it takes exactly four levels), so the generic head check
(:mod:`.heads`) cannot read it. Its forward assumes strides 8/16/32/64 (the 1/64 level upsampled x2 beside the
1/32 one), ``in_channels`` equal to the levels' channels, ``GroupNorm(16, ...)`` over ``in_channels[0]`` and
``feature_dim``, and ``feature_dim == 8 * embed_dim`` (its decoder's input). A mismatch otherwise fails in the
first forward with a bare size error, or, for ``fmap_border``, never: the head drops real features or keeps
padding. Two entry points, as :mod:`.heads`: :func:`check_depth_head` on a built segmentor (``GATECheckHook``,
before the first iteration) and :func:`check_depth_config` on a config before anything is built.
"""
from __future__ import annotations

from typing import Any, Sequence

from mmengine.model import is_model_wrapper

from ..models.pyramid import VPD_STRIDES, VPDPyramid

HEAD = 'model.decode_head'
#: VPDDepthHead's defaults (mmseg 1.2.2)
DEFAULTS = dict(in_channels=[320, 640, 1280, 1280], fmap_border=0, embed_dim=192, feature_dim=1536)


def _is_depth_head(head: Any) -> bool:
    name = head.get('type', '') if isinstance(head, dict) else type(head).__name__
    return str(name).split('.')[-1] == 'VPDDepthHead'


def _pair(border) -> tuple[int, int]:
    return (border, border) if isinstance(border, int) else tuple(border)


def depth_head_problems(in_channels: Sequence[int], fmap_border, embed_dim: int, feature_dim: int,
                        out: Sequence[int] | None, strides: Sequence[int] | None, source: str,
                        pyramid: VPDPyramid | None | bool = False) -> list[str]:
    """What is wrong with a ``VPDDepthHead``'s settings given the levels it receives (``out`` channels at
    ``strides`` from ``source``, ``None``: unknown) and a GATE backbone's pyramid (``False``: not a GATE
    backbone)."""
    problems, border = [], _pair(fmap_border)
    if pyramid is None:
        problems.append(
            f"model.backbone.pyramid is not set: VPDDepthHead needs the four levels of pyramid='vpd' (strides "
            f'{list(VPD_STRIDES)} on the grid padded to 64; without it the levels are cropped to ceil(H/s), so 480 '
            f'crops fail and 128 crops misalign silently). Set model.backbone.pyramid=dict(type=\'vpd\', '
            f'fmap_border={border}) and taps=VPD_TAPS (SD1.x/2.x) or SDXL_VPD_TAPS (mmseg_gate.models.pyramid).')
    elif pyramid is not False and pyramid.fmap_border != border:
        problems.append(f'{HEAD}.fmap_border={border} but model.backbone.pyramid fmap_border={pyramid.fmap_border}: '
                        f'the backbone pads for the one and the head cuts the other, so the depth map would be '
                        f'shifted against the labels. Set both to the same value: (1, 1) for VPD\'s 480 crops, '
                        f'(0, 0) for 512 crops.')
    if strides is not None and list(strides) != list(VPD_STRIDES):
        hint = ("set model.backbone.pyramid='vpd'" if len(set(strides)) > 1 else
                'add a MultiLevelNeck with scales=[2, 1, 0.5, 0.25] (diffusion-transformer taps are all 1/16)')
        problems.append(f'VPDDepthHead needs four levels at strides {list(VPD_STRIDES)}, but {source} gives strides '
                        f'{list(strides)}: {hint}.')
    if len(in_channels) != 4:
        problems.append(f'{HEAD}.in_channels={list(in_channels)}: VPDDepthHead takes exactly four levels'
                        + (f'. Set {HEAD}.in_channels={list(out)}.' if out is not None and len(out) == 4 else '.'))
    elif out is not None and list(in_channels) != list(out):
        problems.append(f'{HEAD}.in_channels={list(in_channels)} does not match {source}: out_channels={list(out)}. '
                        f'Set {HEAD}.in_channels={list(out)}.')
    if in_channels and in_channels[0] % 16:
        problems.append(f'{HEAD}.in_channels[0]={in_channels[0]}: the head normalises that level with GroupNorm(16), '
                        f'so its channels must be a multiple of 16 (project it, e.g. amalgamation out_channels).')
    if feature_dim != 8 * embed_dim:
        problems.append(f'{HEAD}.feature_dim={feature_dim} but embed_dim={embed_dim}: the decoder takes 8 * embed_dim '
                        f'= {8 * embed_dim} channels. Set {HEAD}.feature_dim={8 * embed_dim}.')
    elif feature_dim % 16:
        problems.append(f'{HEAD}.feature_dim={feature_dim} is no multiple of 16 (GroupNorm(16)): use an embed_dim '
                        f'that is a multiple of 2, e.g. embed_dim=16, feature_dim=128.')
    return problems


def depth_estimator_problems(test_cfg, evaluators: Sequence) -> list[str]:
    """Settings mmseg 1.2.2's depth code silently ignores or rejects: ``test_cfg`` mode ``'slide'`` (its
    ``DepthEstimator.inference`` runs the slide windows, then overwrites them with whole-image inference) and
    ``DepthMetric(depth_metrics=[...])`` (its ``isinstance(depth_metrics, [tuple, list])`` raises for any list)."""
    problems = []
    mode = test_cfg.get('mode') if hasattr(test_cfg, 'get') else None
    if mode == 'slide':
        problems.append("model.test_cfg.mode='slide': mmseg 1.2.2's DepthEstimator then runs whole-image inference "
                        "(its inference() falls through to whole_inference and discards the slide result). Use "
                        "mode='slide_flip' (VPD's: the windows and their flips) or mode='whole'.")
    for name, ev in evaluators:
        for e in ev if isinstance(ev, (list, tuple)) else [ev]:
            if isinstance(e, dict) and str(e.get('type', '')).endswith('DepthMetric') and e.get('depth_metrics'):
                problems.append(f'{name}.depth_metrics={list(e["depth_metrics"])}: mmseg 1.2.2\'s DepthMetric rejects '
                                'every list (a broken isinstance check, "isinstance() arg 2 must be a type"). Leave it '
                                'unset: all nine metrics are computed and logged.')
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ValueError('\n'.join(problems))


def _neck_strides(neck, strides: Sequence[int]) -> list[int] | None:
    scales = getattr(neck, 'scales', None) if not isinstance(neck, dict) else neck.get('scales', [0.5, 1, 2, 4])
    if scales is None:
        return None
    strides = list(strides) * len(scales) if len(strides) == 1 else list(strides)
    return [round(s / k) for s, k in zip(strides, scales)] if len(strides) == len(scales) else None


def check_depth_head(segmentor: Any) -> None:
    """Raise if a built segmentor's ``VPDDepthHead`` disagrees with the levels it receives (or a GATE backbone's
    ``pyramid``); no-op for other heads."""
    if is_model_wrapper(segmentor):
        segmentor = segmentor.module
    head, backbone = getattr(segmentor, 'decode_head', None), getattr(segmentor, 'backbone', None)
    if head is None or not _is_depth_head(head):
        return
    gate = hasattr(backbone, 'frozen_provenance')
    out, strides, source = getattr(backbone, 'out_channels', None), getattr(backbone, 'strides', None), 'the backbone'
    neck = getattr(segmentor, 'neck', None)
    if neck is not None:
        num_outs, width = getattr(neck, 'num_outs', None), getattr(neck, 'out_channels', None)
        out = [width] * num_outs if isinstance(width, int) and isinstance(num_outs, int) else None
        strides = None if strides is None else _neck_strides(neck, strides)
        source = 'the neck'
    problems = depth_estimator_problems(getattr(segmentor, 'test_cfg', None), ())
    embed_dim = head.decoder.in_channels // 8
    feature_dim = head.conv_aggregation[0].out_channels
    _raise(problems + depth_head_problems(list(head.in_channels), head.fmap_border, embed_dim, feature_dim,
                                          None if out is None else list(out), strides, source,
                                          getattr(backbone, 'pyramid', None) if gate else False))


def check_depth_config(cfg) -> None:
    """Raise before the model is built if a config's ``VPDDepthHead`` disagrees with a GATE backbone's pyramid,
    its channels (where the config and a local ``unet/config.json`` tell them), the test mode and metric mmseg
    mishandles, or itself (``feature_dim``); the built model is checked again by :func:`check_depth_head`."""
    model = cfg.get('model') if hasattr(cfg, 'get') else None
    head = model.get('decode_head') if isinstance(model, dict) else None
    if not isinstance(head, dict) or not _is_depth_head(head):
        return
    values = {k: head.get(k, v) for k, v in DEFAULTS.items()}
    backbone = model.get('backbone') or {}
    gate = str(backbone.get('type', '')).split('.')[-1] == 'GATEDiffusionBackbone'
    pyramid = VPDPyramid.build(backbone.get('pyramid')) if gate else False
    out = None
    if gate and pyramid and not model.get('neck'):  # whole-block UNet taps of a local folder: their channels
        from .heads import expected_out_channels
        out = expected_out_channels(backbone)
        out = out + out[-1:] if out is not None and len(out) == 3 else out  # the pooled 1/64 level
    evaluators = [(k, cfg.get(k)) for k in ('val_evaluator', 'test_evaluator')]
    problems = depth_estimator_problems(model.get('test_cfg'), evaluators)
    _raise(problems + depth_head_problems(list(values['in_channels']), values['fmap_border'], values['embed_dim'],
                                          values['feature_dim'], out, None, 'the backbone', pyramid))


__all__ = ['check_depth_head', 'check_depth_config', 'depth_head_problems', 'depth_estimator_problems']
