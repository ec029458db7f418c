"""Per-scene prompts: a branch prompt with ``{}`` becomes one prompt per scene, chosen per image.

mmseg's ``DepthEstimator`` hands a backbone whose ``class_embed_select`` is true the pair
``(images, category_ids)``; ``NYUDataset`` reads the id from the file name (27 scenes, ``-1`` for a name it
does not know). VPD selects a learned class embedding by that id. Here the text itself follows the scene:
with ``prompt_classes`` set, a branch prompt such as ``'a photo of a {}'`` is filled with each scene name
(``living_room`` -> ``'a photo of a living room'``), encoded once at build time with the branch's
text-encoder LoRAs, and each image of a batch gets its scene's condition. Id ``-1`` and calls without ids
(``DepthEstimator._forward``, FLOP counters) get the mean of the scenes' conditions, as VPD's ``-1`` row.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .families import TextCondition


def scene_names(classes: str | Sequence[str]) -> tuple[str, ...]:
    """Names from a list, or from an mmseg dataset class's ``METAINFO['classes']`` (``'NYUDataset'``)."""
    if isinstance(classes, str):
        from mmseg.registry import DATASETS
        from mmseg.utils import register_all_modules
        register_all_modules(init_default_scope=False)
        dataset = DATASETS.get(classes)
        if dataset is None or 'classes' not in getattr(dataset, 'METAINFO', {}):
            raise ValueError(f'prompt_classes={classes!r} is no mmseg dataset with METAINFO classes: give a dataset '
                             f"class name such as 'NYUDataset', or the list of names in class-id order")
        classes = dataset.METAINFO['classes']
    names = tuple(str(c) for c in classes)
    if not names:
        raise ValueError('prompt_classes is empty: give the scene names in class-id order, or a dataset class name')
    return names


def is_template(prompt: str) -> bool:
    return '{}' in prompt


def fill(template: str, name: str) -> str:
    """``template`` with ``{}`` replaced by ``name``, underscores as spaces (``living_room``: 'living room')."""
    try:
        return template.format(name.replace('_', ' '))
    except (IndexError, KeyError, ValueError) as error:
        raise ValueError(f'prompt {template!r}: a per-scene template has exactly one empty {{}} for the scene name '
                         f'(and {{{{ }}}} for literal braces); formatting failed with {error!r}') from None


def _mean(conditions: TextCondition) -> TextCondition:
    """The mean condition over the scenes (dim 0); a token mask is their union."""
    return TextCondition(conditions.hidden.mean(0, keepdim=True),
                         None if conditions.pooled is None else conditions.pooled.mean(0, keepdim=True),
                         None if conditions.mask is None else conditions.mask.amax(0, keepdim=True))


class ScenePrompts(nn.Module):
    """The encoded per-scene conditions of the branches whose prompt is a template.

    Args:
        specs: the branches (``prompt`` holds the template).
        names: scene names in class-id order.
        encode: ``(spec, prompt) -> TextCondition`` with the branch's text-encoder adapters on.
        key: ``(spec, prompt) -> hashable``: what an encoding depends on (templates shared by branches with the
            same text-encoder adapters are encoded once).
    """

    def __init__(self, specs: Sequence, names: Sequence[str], encode: Callable, key: Callable) -> None:
        super().__init__()
        self.names = tuple(names)
        self.branch_index: dict[int, int] = {}  # branch -> index of its encoded scene set
        keys: dict = {}
        for branch, spec in enumerate(specs):
            if not is_template(spec.prompt):
                continue
            k = key(spec, spec.prompt)
            if k not in keys:
                keys[k] = len(keys)
                conds = TextCondition.cat([encode(spec, fill(spec.prompt, n)) for n in self.names])
                conds = TextCondition.cat([conds, _mean(conds)])  # row len(names): id -1 and calls without ids
                for part in ('hidden', 'pooled', 'mask'):
                    self.register_buffer(f'{part}_{keys[k]}', getattr(conds, part), persistent=False)
            self.branch_index[branch] = keys[k]
        if not self.branch_index:
            raise ValueError(f'prompt_classes gives {len(self.names)} scene names but no branch prompt has {{}} '
                             "for them: write one as a template, e.g. prompt='a photo of a {}', or drop prompt_classes")

    def __contains__(self, branch: int) -> bool:
        return branch in self.branch_index

    def condition(self, branch: int, class_ids: torch.Tensor | None, batch: int) -> tuple[TextCondition, tuple]:
        """The branch's conditions for a batch with these scene ids (``None``: the mean), and a hashable key."""
        index, n = self.branch_index[branch], len(self.names)
        if class_ids is None:
            rows = torch.full((batch,), n, dtype=torch.long)
        else:
            rows = torch.as_tensor(class_ids).reshape(-1).long().cpu()
            if rows.numel() != batch:
                raise ValueError(f'{rows.numel()} class ids for a batch of {batch}')
            bad = sorted({int(r) for r in rows if not -1 <= int(r) < n})
            if bad:
                raise ValueError(f'class ids {bad} are outside [-1, {n}): prompt_classes has {n} scene names '
                                 f'({self.names[0]!r} ... {self.names[-1]!r}); give the dataset\'s own class names')
            rows = torch.where(rows < 0, torch.full_like(rows, n), rows)
        parts = {p: getattr(self, f'{p}_{index}') for p in ('hidden', 'pooled', 'mask')}
        rows_on = rows.to(parts['hidden'].device)
        cond = TextCondition(**{p: None if t is None else t.index_select(0, rows_on) for p, t in parts.items()})
        return cond, ('scenes', index, tuple(rows.tolist()))


def split_class_ids(x) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``DepthEstimator``'s ``(images, class_ids)`` (or plain images) -> (images, class ids or ``None``)."""
    if isinstance(x, (tuple, list)):
        if len(x) != 2:
            raise ValueError(f'the backbone takes images, or (images, class_ids) as DepthEstimator passes them; got '
                             f'a sequence of {len(x)}')
        return x[0], x[1]
    return x, None


__all__ = ['ScenePrompts', 'scene_names', 'is_template', 'fill', 'split_class_ids']
