"""What differs between Stable Diffusion families: text encoders, text conditioning, added conditions.

SD1.x/2.x condition the UNet on one CLIP encoder's last hidden state. SDXL concatenates the
penultimate hidden states of two encoders, and adds the pooled embedding of the second and six
"time ids" (original size, crop top-left, target size) through ``added_cond_kwargs``, for the UNet
and for its ControlNets alike. The family is read from the folder (``text_encoder_2/`` or the
pipeline class in ``model_index.json``): no flag to set.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

#: text encoder attribute -> tokenizer subfolder, per family
_SD_TEXT = {'text_encoder': 'tokenizer'}
_SDXL_TEXT = {'text_encoder': 'tokenizer', 'text_encoder_2': 'tokenizer_2'}


@dataclass
class TextCondition:
    """One prompt's conditioning: ``hidden`` ``[B, N, D]`` and, for SDXL, ``pooled`` ``[B, P]``."""
    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def expand(self, batch: int) -> 'TextCondition':
        return TextCondition(self.hidden.expand(batch, -1, -1),
                             None if self.pooled is None else self.pooled.expand(batch, -1))

    def to(self, *args, **kwargs) -> 'TextCondition':
        return TextCondition(self.hidden.to(*args, **kwargs),
                             None if self.pooled is None else self.pooled.to(*args, **kwargs))

    @staticmethod
    def cat(conditions: list['TextCondition']) -> 'TextCondition':
        pooled = [c.pooled for c in conditions]
        return TextCondition(torch.cat([c.hidden for c in conditions]),
                             None if pooled[0] is None else torch.cat(pooled))


class StableDiffusionFamily:
    """SD1.x / SD2.x: one CLIP text encoder, its last hidden state, no added conditions."""
    name = 'sd'
    text_encoders = _SD_TEXT
    pipeline_class = 'StableDiffusionPipeline'

    def text_encoder_class(self, attribute: str):
        from transformers import CLIPTextModel
        return CLIPTextModel

    @torch.no_grad()
    def encode_prompt(self, prompt: str, encoders: dict, tokenizers: dict) -> TextCondition:
        """As ``StableDiffusionPipeline.encode_prompt`` without classifier-free guidance."""
        encoder = encoders['text_encoder']
        return TextCondition(encoder(_token_ids(tokenizers['text_encoder'], prompt, encoder))[0])

    def unet_kwargs(self, pooled: torch.Tensor | None, size: tuple[int, int]) -> dict:
        """Extra UNet/ControlNet kwargs for a batch of SD inputs of ``size`` (none for SD1/2)."""
        return {}

    def lora_pipeline(self):
        """The diffusers pipeline class whose LoRA loaders read this family's files."""
        import diffusers
        return getattr(diffusers, self.pipeline_class)


class StableDiffusionXLFamily(StableDiffusionFamily):
    """SDXL: two text encoders (penultimate states concatenated), pooled embedding and time ids."""
    name = 'sdxl'
    text_encoders = _SDXL_TEXT
    pipeline_class = 'StableDiffusionXLPipeline'

    def text_encoder_class(self, attribute: str):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection
        return CLIPTextModelWithProjection if attribute == 'text_encoder_2' else CLIPTextModel

    @torch.no_grad()
    def encode_prompt(self, prompt: str, encoders: dict, tokenizers: dict) -> TextCondition:
        """As ``StableDiffusionXLPipeline.encode_prompt`` (no CFG, no clip skip, prompt_2 = prompt)."""
        hidden, pooled = [], None
        for attribute in self.text_encoders:
            encoder = encoders[attribute]
            out = encoder(_token_ids(tokenizers[attribute], prompt, encoder), output_hidden_states=True)
            pooled = out[0]  # the last encoder's projected pooled output
            hidden.append(out.hidden_states[-2])
        return TextCondition(torch.cat(hidden, dim=-1), pooled)

    def unet_kwargs(self, pooled: torch.Tensor | None, size: tuple[int, int]) -> dict:
        """``text_embeds`` and ``time_ids`` = (original size, crop top-left (0, 0), target size), both
        the SD input's size before padding (``StableDiffusionXLPipeline._get_add_time_ids``)."""
        time_ids = torch.tensor([[*size, 0, 0, *size]], dtype=pooled.dtype, device=pooled.device)
        return dict(added_cond_kwargs=dict(text_embeds=pooled, time_ids=time_ids.expand(pooled.shape[0], -1)))


FAMILIES = {f.name: f for f in (StableDiffusionFamily(), StableDiffusionXLFamily())}


def detect_family(pretrained: str, **hub_kwargs) -> StableDiffusionFamily:
    """The family of a diffusers folder or hub id: SDXL when it has a second text encoder."""
    path = Path(os.path.expanduser(str(pretrained)))
    if path.is_dir():
        index = path / 'model_index.json'
        components = json.loads(index.read_text()) if index.is_file() else {}
        is_xl = (path / 'text_encoder_2').is_dir() or 'text_encoder_2' in components
    else:  # a hub id: its model_index.json says which components it has
        from diffusers import DiffusionPipeline
        is_xl = 'text_encoder_2' in DiffusionPipeline.load_config(str(pretrained), **hub_kwargs)
    return FAMILIES['sdxl' if is_xl else 'sd']


def _token_ids(tokenizer, prompt: str, encoder: torch.nn.Module) -> torch.Tensor:
    ids = tokenizer(prompt, padding='max_length', max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors='pt').input_ids
    return ids.to(next(encoder.parameters()).device)


__all__ = ['TextCondition', 'StableDiffusionFamily', 'StableDiffusionXLFamily', 'FAMILIES', 'detect_family']
