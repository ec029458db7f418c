"""LoRA files in the diffusers/peft format, with every layer's rank and alpha kept.

diffusers infers ranks from the tensors but alphas only from a file's metadata: a file without it
reloads with alpha = the most common rank, which silently rescales layers of other ranks (the
LoCon 3x3 convolutions). :func:`save_lora` therefore always writes the peft ``LoraConfig`` of each
model (``rank_pattern`` / ``alpha_pattern`` for the layers that differ from the common rank).
"""
from __future__ import annotations

import collections
import re
from pathlib import Path

import torch

#: denoiser kinds of LoRA keys (what :func:`lora_key_kinds` tells apart) and how messages name them
DENOISER_KINDS = {'unet': 'SD1.x/2.x/SDXL (a UNet)', 'sd3': 'SD3', 'flux': 'FLUX',
                  'transformer': 'SD3 or FLUX (a diffusion transformer)'}
_WRAP = r'(?:lora_unet_|transformer\.|(?:model\.)?diffusion_model\.)?'
#: (key pattern, kind), first match wins: diffusers/peft, kohya (lora_unet_, lora_te*_), XLabs and BFL/SGM names;
#: 'transformer' (diffusers' transformer_blocks: SD3 or FLUX) and 'denoiser' (kohya's other lora_unet_ layers) are
#: settled by the file's other keys
_KEY_KINDS = tuple((re.compile(pattern), kind) for pattern, kind in (
    (_WRAP + r'(?:double_blocks|single_blocks|single_transformer_blocks)[._]', 'flux'),
    (_WRAP + r'joint_blocks[._]', 'sd3'),
    (r'unet\.|(?:lora_unet_|(?:model\.)?(?:diffusion_model\.)?)'
     r'(?:down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block)[._]', 'unet'),
    (r'transformer\.|transformer_blocks\.', 'transformer'),
    (r'lora_unet_', 'denoiser'),
    (r'text_encoder_2\.|lora_te2_', 'text_encoder_2'),
    (r'text_encoder_3\.|lora_te3_', 'text_encoder_3'),
    (r'text_encoder\.|lora_te1?_', 'text_encoder'),
))


def lora_file_keys(path: str | Path) -> list[str]:
    """The tensor names of a LoRA file, without loading its tensors (``[]`` if it cannot be read: the LoRA
    loaders then say why)."""
    path = Path(path)
    try:
        if path.suffix == '.safetensors':
            from safetensors import safe_open
            with safe_open(str(path), framework='pt') as f:
                return list(f.keys())
        return list(torch.load(str(path), map_location='cpu', weights_only=True, mmap=True))
    except Exception:  # noqa: BLE001 (any unreadable file: left to the loaders' own messages)
        return []


def lora_key_kinds(keys) -> dict[str | None, list[str]]:
    """The keys of a LoRA file by the model they are for: a :data:`DENOISER_KINDS` kind, a text encoder
    attribute (``text_encoder``, ``text_encoder_2``, ``text_encoder_3``) or ``None`` (unknown)."""
    kinds = {key: next((kind for pattern, kind in _KEY_KINDS if pattern.match(key)), None) for key in keys}
    definite = {k for k in kinds.values() if k in ('unet', 'sd3', 'flux')}
    dits = definite & {'sd3', 'flux'}
    settle = {'transformer': dits.pop() if len(dits) == 1 else 'transformer',
              'denoiser': next(iter(definite)) if len(definite) == 1
              else 'transformer' if 'transformer' in kinds.values() else 'unet'}
    out: dict[str | None, list[str]] = {}
    for key, kind in kinds.items():
        out.setdefault(settle.get(kind, kind), []).append(key)
    return out


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
    from .utils.atomic import atomic_path
    with atomic_path(path) as partial:  # written whole or not at all: a kill mid-write keeps the previous file
        pipeline.save_lora_weights(str(path.parent), weight_name=Path(partial).name, safe_serialization=True,
                                   **kwargs)
    return path


__all__ = ['DENOISER_KINDS', 'lora_config_dict', 'save_lora', 'lora_file_keys', 'lora_key_kinds']
