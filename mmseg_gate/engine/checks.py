"""Fail fast, with the fix in the message, on configs that would break later."""
from __future__ import annotations

import os
from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import nn


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_head_channels(segmentor: Any) -> None:
    """Raise if a decode/auxiliary head's ``in_channels`` differ from the backbone's ``out_channels``."""
    if is_model_wrapper(segmentor):
        segmentor = segmentor.module
    backbone = getattr(segmentor, 'backbone', None)
    out = getattr(backbone, 'out_channels', None)
    if out is None:
        return
    heads = [('decode_head', getattr(segmentor, 'decode_head', None))]
    aux = getattr(segmentor, 'auxiliary_head', None)
    if isinstance(aux, nn.ModuleList):  # mmseg builds a list of auxiliary heads as a ModuleList
        heads += [(f'auxiliary_head[{i}]', h) for i, h in enumerate(aux)]
    else:
        heads.append(('auxiliary_head', aux))
    for name, head in heads:
        if head is None or not hasattr(head, 'in_index'):
            continue
        index, channels = _as_list(head.in_index), _as_list(head.in_channels)
        if any(i >= len(out) for i in index):
            raise ValueError(f'model.{name}.in_index={index} but the backbone gives only {len(out)} levels '
                             f'(out_channels={out})')
        want = [out[i] for i in index]
        if getattr(head, 'input_transform', None) == 'resize_concat':  # one concatenated input
            want, channels = [sum(want)], [sum(channels)]
        if want != channels:
            fix = want if len(want) > 1 else want[0]
            raise ValueError(f'model.{name}.in_channels={head.in_channels} does not match the backbone: '
                             f'out_channels={out} at in_index={index}. Set model.{name}.in_channels={fix}.')


@HOOKS.register_module()
class GATECheckHook(Hook):
    """Checks head/backbone channel agreement before the first iteration (train, val or test)."""

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        check_head_channels(runner.model)


def check_data_roots(cfg) -> None:
    """Raise before any model is built if a dataloader's data folder does not exist."""
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if not loader:
            continue
        ds = loader.get('dataset', {})
        root = ds.get('data_root')
        if root and not os.path.isdir(root):
            raise FileNotFoundError(
                f'{key}.dataset.data_root={root!r} does not exist. Prepare the dataset as in mmseg\'s '
                "docs (user_guides/2_dataset_prepare.md) and pass its location, e.g. --cfg-options data_root=/path, "
                'or run `python tools/make_demo_dataset.py` for synthetic data in the same layout.')
