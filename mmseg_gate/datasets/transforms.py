"""Attach a per-image caption (from tools/caption.py's JSON) to each sample."""
from __future__ import annotations

import json
import os.path as osp

from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS


@TRANSFORMS.register_module()
class LoadCaption(BaseTransform):
    """Adds ``results['caption']`` for the image at ``results['img_path']``.

    Args:
        captions_file: JSON mapping image paths relative to ``data_root`` to captions; ``None``: every
            image gets the empty caption ``''`` (a caption style of its own in LoRA training).
        data_root: what the JSON's paths are relative to.
        missing: 'default' (``None``: the backbone's configured prompt) or 'error'.

    Add ``'caption'`` to ``PackSegInputs``' ``meta_keys`` so that the segmentor sees it.
    """

    def __init__(self, captions_file: str | None, data_root: str = '', missing: str = 'default') -> None:
        if missing not in ('default', 'error'):
            raise ValueError(f"missing={missing!r}: use 'default' or 'error'")
        self.data_root, self.missing = data_root, missing
        self.captions = None
        if captions_file is None:
            return
        if not osp.isfile(captions_file):
            raise FileNotFoundError(f'captions file {captions_file!r} not found: make it with tools/caption.py')
        with open(captions_file) as f:
            self.captions = json.load(f)

    def transform(self, results: dict) -> dict:
        if self.captions is None:
            results['caption'] = ''
            return results
        path = results['img_path']
        key = osp.relpath(path, self.data_root) if self.data_root else path
        caption = self.captions.get(key)
        if caption is None and self.missing == 'error':
            raise KeyError(f'no caption for {key!r} in the captions file')
        results['caption'] = caption
        return results
