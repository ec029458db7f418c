"""PixArt-Sigma / PixArt-alpha (DiT with cross-attention): one T5 encoder with its mask, DDPM noise.

Prompts are encoded as the PixArt pipelines do without guidance (lower-cased, no caption cleaning,
``max_sequence_length`` 300 for Sigma and 120 for alpha, T5 run with its attention mask, which the
transformer gets too). PixArt-alpha's 1024 model adds resolution and aspect-ratio conditions (the
pipeline passes them when ``sample_size == 128``; here whenever the transformer uses them). Noise is
DDPM's (the authors' UNet-style path): the folders ship ``DPMSolverMultistepScheduler``, whose
``add_noise`` before ``set_timesteps`` would apply the noise of t=949 for t=50, so the noising is
``DDPMScheduler.from_config`` of that configuration.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import TextCondition, token_ids
from .dit import DiTFamily

#: T5 tokens of the pipelines (their ``max_sequence_length`` defaults)
SIGMA_TOKENS, ALPHA_TOKENS = 300, 120


class PixArtSigmaFamily(DiTFamily):
    """PixArt-Sigma (``PixArtTransformer2DModel``, 300 T5 tokens)."""
    name = 'pixart_sigma'
    pipeline_classes = ('PixArtSigmaPipeline',)
    max_tokens = SIGMA_TOKENS
    denoiser_class = 'PixArtTransformer2DModel'
    controlnet_class = None  # diffusers has no PixArt ControlNet model
    text_encoders = {'text_encoder': 'tokenizer'}
    adaln_blocks = ('BasicTransformerBlock',)
    repeated_blocks = adaln_blocks  # diffusers 0.42's class names none

    def text_encoder_class(self, attribute: str):
        from transformers import T5EncoderModel
        return T5EncoderModel

    @torch.no_grad()
    def encode_prompt(self, prompt: str, encoders: dict, tokenizers: dict, config=None) -> TextCondition:
        """As ``PixArtSigmaPipeline.encode_prompt`` / ``PixArtAlphaPipeline.encode_prompt`` (no CFG,
        ``clean_caption=False``): hidden states and the T5 attention mask."""
        encoder, tokenizer = encoders['text_encoder'], tokenizers['text_encoder']
        inputs = tokenizer(prompt.lower().strip(), padding='max_length', max_length=self.max_tokens,
                           truncation=True, add_special_tokens=True, return_tensors='pt')
        device = next(encoder.parameters()).device
        mask = inputs.attention_mask.to(device)
        return TextCondition(encoder(inputs.input_ids.to(device), attention_mask=mask)[0], mask=mask)

    def condition_kwargs(self, text: TextCondition, size: tuple[int, int], config=None) -> dict:
        """T5 states and mask; resolution and aspect ratio of the input (before padding) when the
        transformer uses them (its ``use_additional_conditions``, by default ``sample_size == 128``)."""
        added = dict(resolution=None, aspect_ratio=None)
        uses = config.get('use_additional_conditions') if config is not None else None
        if uses is None and config is not None:
            uses = config.get('sample_size') == 128
        if uses:
            b, like = text.hidden.shape[0], text.hidden
            added = dict(resolution=torch.tensor([list(size)], dtype=like.dtype, device=like.device).expand(b, -1),
                         aspect_ratio=torch.tensor([[size[0] / size[1]]], dtype=like.dtype,
                                                   device=like.device).expand(b, -1))
        return dict(encoder_hidden_states=text.hidden, encoder_attention_mask=text.mask, added_cond_kwargs=added)

    def noise_scheduler(self, pretrained: str, **hub_kwargs):
        from diffusers import DDPMScheduler
        config = DDPMScheduler.load_config(pretrained, subfolder='scheduler', **hub_kwargs)
        return DDPMScheduler.from_config(config)

    def is_adaln_block(self, module: nn.Module) -> bool:
        """PixArt's blocks: ``BasicTransformerBlock`` with ``ada_norm_single`` (its own ``scale_shift_table``)."""
        return super().is_adaln_block(module) and getattr(module, 'norm_type', None) == 'ada_norm_single'

    def block_modulation(self, block: nn.Module, tokens: torch.Tensor, block_kwargs: dict) -> torch.Tensor:
        """``BasicTransformerBlock`` with ``ada_norm_single``: its ``norm1`` (LayerNorm without affine),
        then ``(1 + scale_msa) x + shift_msa`` from its ``scale_shift_table`` and the block's ``timestep``."""
        b = tokens.shape[0]
        shift, scale = (block.scale_shift_table[None] + block_kwargs['timestep'].reshape(b, 6, -1)).chunk(6, dim=1)[:2]
        return block.norm1(tokens) * (1 + scale) + shift


class PixArtAlphaFamily(PixArtSigmaFamily):
    """PixArt-alpha (120 T5 tokens; the 1024 model's resolution and aspect-ratio conditions)."""
    name = 'pixart_alpha'
    pipeline_classes = ('PixArtAlphaPipeline',)
    max_tokens = ALPHA_TOKENS


__all__ = ['PixArtSigmaFamily', 'PixArtAlphaFamily', 'SIGMA_TOKENS', 'ALPHA_TOKENS']
