"""Stable Diffusion 3 / 3.5 (MMDiT): three text encoders, pooled projections, flow matching.

Prompts are encoded as ``StableDiffusion3Pipeline.encode_prompt`` does without guidance: the
penultimate states of two CLIP encoders side by side, zero-padded to T5's width, followed by T5's
256 tokens (zeros when the folder has no T5, as diffusers does with ``text_encoder_3=None``); the
two CLIP pooled outputs side by side. Latents are noised by flow matching; GATE's ``t`` is mapped as
the authors' img2img does (:mod:`..flow_matching`). MMDiT blocks return ``(text, image)`` tokens:
a tap keeps the image tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..flow_matching import img2img_sigma
from .base import TextCondition, token_ids
from .dit import DiTFamily

#: T5 tokens of ``StableDiffusion3Pipeline`` (its ``max_sequence_length`` default); they change the features
T5_TOKENS = 256


class StableDiffusion3Family(DiTFamily):
    """SD3 / SD3.5 (``SD3Transformer2DModel``; SD3.5-medium's dual-attention blocks included)."""
    name = 'sd3'
    pipeline_classes = ('StableDiffusion3Pipeline', 'StableDiffusion3Img2ImgPipeline',
                        'StableDiffusion3ControlNetPipeline', 'StableDiffusion3InpaintPipeline')
    denoiser_class = 'SD3Transformer2DModel'
    controlnet_class = 'SD3ControlNetModel'
    text_encoders = {'text_encoder': 'tokenizer', 'text_encoder_2': 'tokenizer_2', 'text_encoder_3': 'tokenizer_3'}
    optional_text_encoders = ('text_encoder_3',)
    lora_text_encoders_only = ('text_encoder', 'text_encoder_2')  # SD3LoraLoaderMixin: no T5 layers
    lora_kinds = ('sd3', 'transformer')
    adaln_blocks = ('JointTransformerBlock',)
    repeated_blocks = adaln_blocks  # diffusers 0.42's class names none
    flow_matching = True

    def matches(self, components: dict) -> bool:
        return super().matches(components) or ('transformer' in components and 'text_encoder_3' in components)

    def text_encoder_class(self, attribute: str):
        from transformers import CLIPTextModelWithProjection, T5EncoderModel
        return T5EncoderModel if attribute == 'text_encoder_3' else CLIPTextModelWithProjection

    @torch.no_grad()
    def encode_prompt(self, prompt: str, encoders: dict, tokenizers: dict, config=None) -> TextCondition:
        """As ``StableDiffusion3Pipeline.encode_prompt`` (no CFG, no clip skip, prompt_2 = prompt_3 =
        prompt, ``max_sequence_length=256``); ``config``: the transformer's (T5's width when T5 is absent)."""
        hidden, pooled = [], []
        clip_length = tokenizers['text_encoder'].model_max_length  # the pipeline's for both CLIPs
        for attribute in ('text_encoder', 'text_encoder_2'):
            encoder = encoders[attribute]
            out = encoder(token_ids(tokenizers[attribute], prompt, encoder, clip_length), output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        clip = torch.cat(hidden, dim=-1)
        t5 = encoders['text_encoder_3'] if 'text_encoder_3' in encoders else None
        if t5 is not None:
            t5_states = t5(token_ids(tokenizers['text_encoder_3'], prompt, t5, T5_TOKENS))[0]
        else:
            t5_states = clip.new_zeros(1, T5_TOKENS, config['joint_attention_dim'])
        clip = F.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
        return TextCondition(torch.cat([clip, t5_states.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1))

    def condition_kwargs(self, text: TextCondition, size: tuple[int, int], config=None) -> dict:
        return dict(encoder_hidden_states=text.hidden, pooled_projections=text.pooled)

    def image_output(self, module: nn.Module, output):
        """MMDiT blocks return ``(text tokens, image tokens)`` (text ``None`` in the last block);
        joint attention ``(image, text)``."""
        from diffusers.models.attention import JointTransformerBlock
        if isinstance(module, JointTransformerBlock):
            return output[1]
        return super().image_output(module, output)

    # ------------------------------------------------------------------ ControlNets
    def prepare_controlnet(self, net: nn.Module, denoiser: nn.Module, path: str) -> None:
        """SD3.5's official ControlNets have no patch embedding of their own: they share the transformer's
        (as ``StableDiffusion3ControlNetPipeline`` sets up)."""
        if getattr(net.config, 'use_pos_embed', True) is False:
            net.pos_embed = net._get_pos_embed_from_transformer(denoiser).to(net.dtype)
        width = net.config.joint_attention_dim
        if width is not None and width != denoiser.config.joint_attention_dim:
            raise ValueError(f'ControlNet {path!r} is for joint_attention_dim={width}, the transformer has '
                             f'{denoiser.config.joint_attention_dim}: use a ControlNet made for this base model')

    @torch.no_grad()
    def control_input(self, sd, condition: torch.Tensor, net: nn.Module) -> torch.Tensor:
        """The control image through the VAE, as ``StableDiffusion3ControlNetPipeline``: in [-1, 1], latents
        ``(z - shift) * scale`` where InstantX's kind (``force_zeros_for_pooled_projection``) uses no shift;
        the posterior mode instead of the pipeline's unseeded sample, so features are deterministic."""
        x = (condition * 2 - 1).to(sd.vae.dtype).contiguous(memory_format=torch.channels_last)
        z = sd.vae.encode(x).latent_dist.mode().float()
        shift = 0.0 if net.config.force_zeros_for_pooled_projection else sd.vae.config.shift_factor
        return ((z - shift) * sd.vae.config.scaling_factor).contiguous().to(sd.dtype)

    def controlnet_kwargs(self, net: nn.Module, kwargs: dict, mode: int | None = None) -> dict:
        """Zero pooled projections for InstantX's kind; no text states for those without a context embedder."""
        kwargs = dict(kwargs)
        if net.config.force_zeros_for_pooled_projection:
            kwargs['pooled_projections'] = torch.zeros_like(kwargs['pooled_projections'])
        if net.config.joint_attention_dim is None:
            kwargs['encoder_hidden_states'] = None
        return kwargs

    def split_residuals(self, output, net: nn.Module, denoiser: nn.Module) -> tuple:
        return list(output[0]), None

    def residual_kwargs(self, denoiser: nn.Module, down, mid) -> dict:
        return dict(block_controlnet_hidden_states=down)

    def tap_select(self, denoiser: nn.Module, down):
        """With ControlNet residuals, a tapped block gives its image tokens *plus its residual*: what the
        next block receives (diffusers adds the residual after the block, so a plain hook misses it)."""
        if down is None:
            return self.image_output
        blocks = list(denoiser.transformer_blocks)
        interval = len(blocks) / len(down)
        return self.select_with_residuals(
            {id(b): down[int(i / interval)] for i, b in enumerate(blocks) if b.context_pre_only is False})

    # ------------------------------------------------------------------ LoRA
    def read_lora(self, path: str, unet_config=None) -> tuple[dict, dict | None, dict | None]:
        (state_dict, metadata) = self.lora_pipeline().lora_state_dict(path, return_lora_metadata=True)
        return state_dict, None, metadata  # no network alphas: they are in the file's metadata

    # ------------------------------------------------------------------ noise
    def noise_level(self, scheduler, timestep: int, seq_len: int | None = None) -> float:
        """The authors' mapping: img2img at strength ``t / 1000``, first step of the 28-step schedule."""
        return img2img_sigma(scheduler.config, timestep, seq_len)

    def model_timestep(self, level) -> float:
        return float(level) * 1000.0  # the scheduler's timesteps are sigma * 1000, as the pipeline passes

    # ------------------------------------------------------------------ AdaLN
    def block_modulation(self, block: nn.Module, tokens: torch.Tensor, block_kwargs: dict) -> torch.Tensor:
        """The block's ``norm1`` (LayerNorm without affine, then ``(1 + scale_msa) x + shift_msa`` from its
        AdaLN of the block's ``temb``), applied to the block's output image tokens."""
        return block.norm1(tokens, emb=block_kwargs['temb'])[0]


__all__ = ['StableDiffusion3Family', 'T5_TOKENS']
