"""Several branches in one UNet call: peft's mixed-adapter batches.

Branches differ in prompt, ControlNet residuals and LoRA adapter, and all three can vary along the
batch: prompts and residuals are tensors, and peft LoRA layers take ``adapter_names`` (one adapter
per sample, ``'__base__'`` for none). One batched call replaces a call per branch, which uses the
hardware better (larger matrix products) at the cost of the branches' activations held together.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

from torch import nn

BASE_ADAPTER = '__base__'  # peft's name for "no adapter" in a mixed batch


def plan_branch_groups(adapter_keys: Sequence[tuple], enabled: bool = True) -> list[list[int]]:
    """Partition branches (given by their UNet adapters ``((name, scale), ...)``) into groups that
    can share one UNet call.

    peft applies one adapter per sample and one scale per adapter and layer, so a group's branches
    each use at most one adapter, and an adapter has the same scale across the group. A branch
    with several adapters runs alone.
    """
    if not enabled:
        return [[i] for i in range(len(adapter_keys))]
    groups: list[list[int]] = []
    scales: list[dict | None] = []  # per group: adapter -> scale; None for a lone multi-adapter branch
    for i, key in enumerate(adapter_keys):
        if len(key) > 1:
            groups.append([i])
            scales.append(None)
            continue
        for group, used in zip(groups, scales):
            if used is not None and all(used.get(name, scale) == scale for name, scale in key):
                group.append(i)
                used.update(key)
                break
        else:
            groups.append([i])
            scales.append(dict(key))
    return groups


def lora_layers(model: nn.Module) -> list[nn.Module]:
    """The peft LoRA layers of ``model`` (the modules that take ``adapter_names``)."""
    from peft.tuners.lora import LoraLayer
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextlib.contextmanager
def mixed_adapter_batch(layers: Sequence[nn.Module], adapter_names: Sequence[str]) -> Iterator[None]:
    """Within the block every layer of ``layers`` runs sample ``i`` with adapter ``adapter_names[i]``.

    diffusers' UNet does not pass ``adapter_names`` down to its layers, so a forward pre-hook adds it
    to each LoRA layer's call; the layers' adapters must be enabled (scales as set by
    ``set_adapters``).
    """
    names = list(adapter_names)

    def add_names(module, args, kwargs):
        return args, {**kwargs, 'adapter_names': names}

    handles = [layer.register_forward_pre_hook(add_names, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


__all__ = ['BASE_ADAPTER', 'plan_branch_groups', 'lora_layers', 'mixed_adapter_batch']
