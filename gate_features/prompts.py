"""Text conditioning per branch: encoded once at build time, per-image prompts on demand.

Each distinct (prompt, text-encoder adapters) pair is encoded once and kept as non-persistent
buffers (they move with the model, stay out of checkpoints); the text encoders can then be released.
Per-image prompts (captions) are encoded per forward and kept in a bounded cache. With ``class_names``,
branch prompts with ``{}`` are per-scene templates, chosen per image by class id (:mod:`.scene_prompts`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .branches import AdapterRegistry, BranchSpec
from .families import TextCondition
from .scene_prompts import ScenePrompts, scene_names

PROMPT_CACHE_SIZE = 1024  # per-image prompts kept encoded: a dataset's captions would not fit


class BranchPrompts(nn.Module):
    """The branches' text conditions, as their denoiser and ControlNets get them.

    Args:
        sd: the frozen SD stack with its text encoders still loaded.
        specs: the branches.
        adapters: the LoRA adapters, loaded into the text encoders already.
        class_names: scene names (or an mmseg dataset class name) that fill ``{}`` in branch prompts; those
            branches follow the class ids given to :meth:`branch_condition` (:class:`ScenePrompts`).
    """

    def __init__(self, sd, specs: Sequence[BranchSpec], adapters: AdapterRegistry,
                 class_names: str | Sequence[str] | None = None) -> None:
        super().__init__()
        object.__setattr__(self, 'sd', sd)  # not a submodule: the backbone owns the frozen stack
        self.specs, self.adapters = specs, adapters
        self._image_prompts: list | None = None
        self._cache: dict = {}
        keys: dict[tuple, int] = {}
        self.branch_prompt: list[int] = []  # branch -> index of its encoded prompt
        for spec in specs:
            key = self._key(spec, spec.prompt)
            if key not in keys:
                keys[key] = len(keys)
                cond = self._encode(spec, spec.prompt)
                self.register_buffer(f'hidden_{keys[key]}', cond.hidden, persistent=False)
                self.register_buffer(f'pooled_{keys[key]}', cond.pooled, persistent=False)
                self.register_buffer(f'mask_{keys[key]}', cond.mask, persistent=False)  # PixArt's T5 mask
            self.branch_prompt.append(keys[key])
        self.scenes = None if class_names is None else ScenePrompts(specs, scene_names(class_names), self._encode,
                                                                     self._key)

    def _key(self, spec: BranchSpec, prompt: str) -> tuple:
        """What an encoding depends on: the prompt and the text-encoder adapters with their scales."""
        return (prompt, *(tuple(map(tuple, self.adapters.of(spec, t))) for t in self.sd.family.text_encoders))

    def _encode(self, spec: BranchSpec, prompt: str) -> TextCondition:
        """``prompt``'s condition with the branch's text-encoder adapters switched on."""
        from diffusers.utils.peft_utils import set_adapter_layers, set_weights_and_activate_adapters
        for target, encoder in self.sd.text_encoders.items():
            names, scales = self.adapters.of(spec, target)
            if names:
                set_adapter_layers(encoder, enabled=True)
                set_weights_and_activate_adapters(encoder, names, scales)
            elif self.adapters.uses(target):
                set_adapter_layers(encoder, enabled=False)
        return self.sd.encode_prompt(prompt).to(torch.float32)

    def fixed(self, index: int) -> TextCondition:
        """The ``index``-th encoded configured prompt, ``[1, ...]``."""
        return TextCondition(getattr(self, f'hidden_{index}'), getattr(self, f'pooled_{index}'),
                             getattr(self, f'mask_{index}'))

    def set_prompts(self, prompts: Sequence[str | None] | None) -> None:
        """Per-image prompts (e.g. captions) for the following forwards; ``None`` entries, or branches
        with a prompt of their own, keep the configured prompt. Needs ``keep_text_encoder=True``."""
        if prompts is not None and any(p is not None for p in prompts) and self.sd.text_encoders is None:
            raise RuntimeError('per-image prompts need the text encoder: build the backbone with '
                               'keep_text_encoder=True')
        self._image_prompts = list(prompts) if prompts is not None else None

    def branch_condition(self, branch: int, batch: int,
                         class_ids: torch.Tensor | None = None) -> tuple[TextCondition, object]:
        """The branch's condition for this batch and a hashable key of what it encodes; per-scene branches
        follow ``class_ids`` (their mean without), before any per-image prompt."""
        if self.scenes is not None and branch in self.scenes:
            return self.scenes.condition(branch, class_ids, batch)
        spec, index = self.specs[branch], self.branch_prompt[branch]
        prompts, fixed = self._image_prompts, self.fixed(index)
        if prompts is None or spec.own_prompt or all(p is None for p in prompts):
            return fixed.expand(batch), index
        if len(prompts) != batch:
            raise ValueError(f'{len(prompts)} per-image prompts for a batch of {batch}')
        conditions, keys = [], []
        for prompt in prompts:
            if prompt is None:
                conditions.append(fixed)
                keys.append(index)
                continue
            key = self._key(spec, prompt)
            if key not in self._cache:
                if len(self._cache) >= PROMPT_CACHE_SIZE:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = self._encode(spec, prompt).to(fixed.hidden.device)
            conditions.append(self._cache[key])
            keys.append(key)
        return TextCondition.cat(conditions), tuple(keys)


__all__ = ['BranchPrompts']
