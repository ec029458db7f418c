"""Stable Diffusion 1.x/2.x and SDXL: UNet denoisers, CLIP text encoders, DDPM noising.

SD1.x/2.x condition the UNet on one CLIP encoder's last hidden state. SDXL concatenates the
penultimate hidden states of two encoders, and adds the pooled embedding of the second and six
"time ids" (original size, crop top-left, target size) through ``added_cond_kwargs``, for the UNet
and for its ControlNets alike.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import DenoiserFamily, TextCondition, token_ids


class StableDiffusionFamily(DenoiserFamily):
    """SD1.x / SD2.x: one CLIP text encoder, its last hidden state, no added conditions."""
    name = 'sd'
    pipeline_classes = ('StableDiffusionPipeline', 'StableDiffusionImg2ImgPipeline',
                        'StableDiffusionControlNetPipeline')
    text_encoders = {'text_encoder': 'tokenizer'}

    def matches(self, components: dict) -> bool:
        return super().matches(components) or ('unet' in components and 'text_encoder_2' not in components)

    def text_encoder_class(self, attribute: str):
        from transformers import CLIPTextModel
        return CLIPTextModel

    def tokenizer_class(self, attribute: str):
        from transformers import CLIPTokenizer
        return CLIPTokenizer

    @torch.no_grad()
    def encode_prompt(self, prompt: str, encoders: dict, tokenizers: dict, config=None) -> TextCondition:
        """As ``StableDiffusionPipeline.encode_prompt`` without classifier-free guidance."""
        encoder = encoders['text_encoder']
        return TextCondition(encoder(token_ids(tokenizers['text_encoder'], prompt, encoder))[0])

    def check_denoiser(self, denoiser: nn.Module, text_dim: int, where: str) -> None:
        cross = denoiser.config.cross_attention_dim
        if cross != text_dim:
            raise ValueError(f'the UNet{where} expects text states of width {cross}, the text encoders give '
                             f'{text_dim}: use a UNet made for this base model')

    def prepare_controlnet(self, net: nn.Module, denoiser: nn.Module, path: str) -> None:
        if net.config.cross_attention_dim != denoiser.config.cross_attention_dim:
            raise ValueError(f'ControlNet {path!r} is for cross_attention_dim={net.config.cross_attention_dim}, '
                             f'the UNet has {denoiser.config.cross_attention_dim}: use a ControlNet made for '
                             'this base model')

    def latent_multiple(self, denoiser: nn.Module) -> int:
        return 2 ** (len(denoiser.config.down_block_types) - 1)

    def condition_kwargs(self, text: TextCondition, size: tuple[int, int], config=None) -> dict:
        return dict(encoder_hidden_states=text.hidden, **self.added_conditions(text.pooled, size))

    def added_conditions(self, pooled: torch.Tensor | None, size: tuple[int, int]) -> dict:
        """Extra UNet/ControlNet kwargs for a batch of SD inputs of ``size`` (none for SD1/2)."""
        return {}


class StableDiffusionXLFamily(StableDiffusionFamily):
    """SDXL: two text encoders (penultimate states concatenated), pooled embedding and time ids."""
    name = 'sdxl'
    pipeline_classes = ('StableDiffusionXLPipeline', 'StableDiffusionXLImg2ImgPipeline',
                        'StableDiffusionXLControlNetPipeline')
    text_encoders = {'text_encoder': 'tokenizer', 'text_encoder_2': 'tokenizer_2'}

    def matches(self, components: dict) -> bool:
        return (DenoiserFamily.matches(self, components)
                or ('unet' in components and 'text_encoder_2' in components))

    def text_encoder_class(self, attribute: str):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection
        return CLIPTextModelWithProjection if attribute == 'text_encoder_2' else CLIPTextModel

    @torch.no_grad()
    def encode_prompt(self, prompt: str, encoders: dict, tokenizers: dict, config=None) -> TextCondition:
        """As ``StableDiffusionXLPipeline.encode_prompt`` (no CFG, no clip skip, prompt_2 = prompt)."""
        hidden, pooled = [], None
        for attribute in self.text_encoders:
            encoder = encoders[attribute]
            out = encoder(token_ids(tokenizers[attribute], prompt, encoder), output_hidden_states=True)
            pooled = out[0]  # the last encoder's projected pooled output
            hidden.append(out.hidden_states[-2])
        return TextCondition(torch.cat(hidden, dim=-1), pooled)

    def added_conditions(self, pooled: torch.Tensor | None, size: tuple[int, int]) -> dict:
        """``text_embeds`` and ``time_ids`` = (original size, crop top-left (0, 0), target size), both
        the SD input's size before padding (``StableDiffusionXLPipeline._get_add_time_ids``)."""
        time_ids = torch.tensor([[*size, 0, 0, *size]], dtype=pooled.dtype, device=pooled.device)
        return dict(added_cond_kwargs=dict(text_embeds=pooled, time_ids=time_ids.expand(pooled.shape[0], -1)))


__all__ = ['StableDiffusionFamily', 'StableDiffusionXLFamily']
