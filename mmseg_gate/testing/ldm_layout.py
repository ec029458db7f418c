"""Write a diffusers UNet + CLIP text encoder as one single-file checkpoint in the original
Stable Diffusion (LDM) layout, as the GATE authors published their merged models.

Test-only: it lets tests feed ``tools/extract_lora.py`` the kind of file users have, which the tool
then reads with diffusers' own single-file loading. Covers SD1.x-shaped UNets of any depth.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

_RESNET_PARTS = {'norm1': 'in_layers.0', 'conv1': 'in_layers.2', 'time_emb_proj': 'emb_layers.1',
                 'norm2': 'out_layers.0', 'conv2': 'out_layers.3', 'conv_shortcut': 'skip_connection'}


def _unet_prefix_map(config) -> dict[str, str]:
    n, per = len(config.block_out_channels), config.layers_per_block
    m = {'time_embedding.linear_1': 'time_embed.0', 'time_embedding.linear_2': 'time_embed.2',
         'conv_in': 'input_blocks.0.0', 'conv_norm_out': 'out.0', 'conv_out': 'out.2',
         'mid_block.resnets.0': 'middle_block.0', 'mid_block.attentions.0': 'middle_block.1',
         'mid_block.resnets.1': 'middle_block.2'}
    for i in range(n):
        for j in range(per):
            m[f'down_blocks.{i}.resnets.{j}'] = f'input_blocks.{1 + i * (per + 1) + j}.0'
            m[f'down_blocks.{i}.attentions.{j}'] = f'input_blocks.{1 + i * (per + 1) + j}.1'
        if i < n - 1:
            m[f'down_blocks.{i}.downsamplers.0.conv'] = f'input_blocks.{(i + 1) * (per + 1)}.0.op'
        attn = config.up_block_types[i].startswith('CrossAttn')
        for j in range(per + 1):
            m[f'up_blocks.{i}.resnets.{j}'] = f'output_blocks.{i * (per + 1) + j}.0'
            m[f'up_blocks.{i}.attentions.{j}'] = f'output_blocks.{i * (per + 1) + j}.1'
        if i < n - 1:
            m[f'up_blocks.{i}.upsamplers.0'] = f'output_blocks.{i * (per + 1) + per}.{2 if attn else 1}'
    return m


def unet_to_ldm(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefix_map(unet.config)
    out = {}
    for key, value in unet.state_dict().items():
        prefix = max((p for p in prefixes if key.startswith(p + '.')), key=len)
        rest = key[len(prefix) + 1:]
        if '.resnets.' in prefix:
            part, _, tail = rest.partition('.')
            rest = f'{_RESNET_PARTS[part]}.{tail}'
        out[f'model.diffusion_model.{prefixes[prefix]}.{rest}'] = value
    return out


def save_ldm_checkpoint(path: str | Path, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> Path:
    """One ``.safetensors`` file with the UNet and the CLIP text encoder in SD's original key layout."""
    tensors = unet_to_ldm(unet)
    for key, value in text_encoder.state_dict().items():  # transformers 5 drops the 'text_model.' level
        tensors[f'cond_stage_model.transformer.text_model.{key.removeprefix("text_model.")}'] = value
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return Path(path)


__all__ = ['unet_to_ldm', 'save_ldm_checkpoint']
