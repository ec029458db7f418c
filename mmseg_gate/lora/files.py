"""LoRA files in the diffusers/peft format, with every layer's rank and alpha kept.

diffusers infers ranks from the tensors but alphas only from a file's metadata: a file without it
reloads with alpha = the most common rank, which silently rescales layers of other ranks (the
LoCon 3x3 convolutions). :func:`save_lora` therefore always writes the peft ``LoraConfig`` of each
model (``rank_pattern`` / ``alpha_pattern`` for the layers that differ from the common rank).
"""
from __future__ import annotations

import collections
from pathlib import Path

import torch


def lora_config_dict(ranks: dict[str, int], alphas: dict[str, float]) -> dict:
    """A peft ``LoraConfig`` (as a dict) for layers ``name -> rank`` and ``name -> alpha``."""
    from peft import LoraConfig
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=sorted(ranks),
                        rank_pattern={n: v for n, v in ranks.items() if v != r},
                        alpha_pattern={n: v for n, v in alphas.items() if v != alpha})
    out = config.to_dict()
    out['target_modules'] = sorted(ranks)  # peft stores a set; JSON wants a list
    return out


def save_lora(path: str | Path, layers: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]],
              pipeline=None) -> Path:
    """Write a LoRA file that ``GATEDiffusionBackbone`` and diffusers' ``load_lora_weights`` read.

    Args:
        path: the ``.safetensors`` file to write.
        layers: per model (``'unet'`` or ``'transformer'``, ``'text_encoder'``, ...) ``module name -> (down,
            up, alpha)``, with ``down`` the peft ``lora_A`` weight and ``up`` the ``lora_B`` weight.
        pipeline: the diffusers pipeline class whose ``save_lora_weights`` writes the family's format
            (default: ``StableDiffusionPipeline``; SD3: ``StableDiffusion3Pipeline``).
    """
    from diffusers import StableDiffusionPipeline
    pipeline = pipeline or StableDiffusionPipeline
    path = Path(path)
    if path.suffix != '.safetensors':
        raise ValueError(f'{path}: LoRA files are written as .safetensors')
    kwargs = {}
    for model, named in layers.items():
        if not named:
            continue
        tensors = {}
        for name, (down, up, _) in named.items():
            tensors[f'{name}.lora_A.weight'] = down.contiguous()
            tensors[f'{name}.lora_B.weight'] = up.contiguous()
        kwargs[f'{model}_lora_layers'] = tensors
        kwargs[f'{model}_lora_adapter_metadata'] = lora_config_dict(
            {n: int(d.shape[0]) for n, (d, _, _) in named.items()}, {n: float(a) for n, (_, _, a) in named.items()})
    if not kwargs:
        raise ValueError('no LoRA layers to write')
    from ..utils.atomic import atomic_path
    with atomic_path(path) as partial:  # written whole or not at all: a kill mid-write keeps the previous file
        pipeline.save_lora_weights(str(path.parent), weight_name=Path(partial).name, safe_serialization=True,
                                   **kwargs)
    return path


__all__ = ['DENOISER_KINDS', 'lora_config_dict', 'save_lora', 'lora_file_keys', 'lora_key_kinds']
