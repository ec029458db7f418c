"""FLUX.1 (dev, schnell): packed latents, rotary position ids, CLIP pooled + T5 prompts, guidance.

- Prompts as ``FluxPipeline.encode_prompt`` without guidance: CLIP's pooled output (``pooler_output``)
  and T5's 512 tokens (the pipeline's ``max_sequence_length``; they change the features).
- The denoiser sees the VAE latents ``(z - shift) * scale`` packed 2x2 into 64-channel tokens
  (``_pack_latents``: one token per 16x16 pixels, row-major), with ``img_ids`` (row, column) and
  zero ``txt_ids``; it is given ``timestep = sigma`` (it multiplies by 1000 itself) and, for the
  guidance-distilled dev model, ``guidance`` (the authors' extractor passed ``guidance_scale=1``).
- Noise: flow matching with FLUX's resolution-dependent shift; GATE's ``t`` maps as the authors' img2img
  (``FluxImg2ImgPipeline``: sigmas ``linspace(1, 1/28, 28)`` shifted by ``mu`` of the image's tokens,
  strength ``t / 1000``): ``t=50`` gives sigma 0.126 at 512x512 and 0.195 at 1024x1024.
- Taps: ``transformer_blocks.0-18`` (double-stream) and ``single_transformer_blocks.0-37`` (single-stream;
  the authors' ``vit-block19-56``); both return ``(text tokens, image tokens)``: a tap keeps the image part.
- ControlNets (``FluxControlNetModel``): InstantX's (canny; union with a ``mode``) get the control image
  VAE-encoded and packed; XLabs' (an ``input_hint_block``) get it in pixels and their few double-block
  residuals repeat over all blocks (``controlnet_blocks_repeat``). Residuals are handed over one per block.
- LoRA files in diffusers, kohya and XLabs formats through ``FluxLoraLoaderMixin``'s conversions.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..flow_matching import AUTHORS_STEPS, img2img_sigma
from .base import TextCondition, token_ids
from .dit import DiTFamily

#: T5 tokens of ``FluxPipeline`` (its ``max_sequence_length`` default)
T5_TOKENS = 512
#: guidance of the dev model: the authors' extractor ran FluxImg2ImgPipeline with guidance_scale=1
#: (FluxPipeline's default is 3.5, FluxImg2ImgPipeline's 7.0)
AUTHORS_GUIDANCE = 1.0


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, h/2 * w/2, 4C]``: 2x2 patches as tokens, row-major (``_pack_latents``)."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for a latent grid of ``h x w``."""
    b, n, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def latent_image_ids(h: int, w: int, device=None, dtype=None) -> torch.Tensor:
    """``[h/2 * w/2, 3]`` position ids (0, row, column) of the packed tokens (``_prepare_latent_image_ids``)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def img2img_sigmas(steps: int = AUTHORS_STEPS) -> np.ndarray:
    """The sigmas FLUX's pipelines hand the scheduler before shifting: ``linspace(1, 1/steps, steps)``."""
    return np.linspace(1.0, 1 / steps, steps)


class FluxFamily(DiTFamily):
    """FLUX.1-dev / -schnell (``FluxTransformer2DModel``: 19 double- and 38 single-stream blocks)."""
    name = 'flux'
    pipeline_classes = ('FluxPipeline', 'FluxImg2ImgPipeline', 'FluxControlNetPipeline',
                        'FluxControlNetImg2ImgPipeline', 'FluxInpaintPipeline')
    denoiser_class = 'FluxTransformer2DModel'
    controlnet_class = 'FluxControlNetModel'
    text_encoders = {'text_encoder': 'tokenizer', 'text_encoder_2': 'tokenizer_2'}
    lora_text_encoders_only = ('text_encoder',)  # FluxLoraLoaderMixin: CLIP layers only
    lora_kinds = ('flux', 'transformer')
    adaln_blocks = ('FluxTransformerBlock', 'FluxSingleTransformerBlock')
    flow_matching = True
    guidance_default = AUTHORS_GUIDANCE

    def matches(self, components: dict) -> bool:
        return super().matches(components) or ('transformer' in components and 'text_encoder_2' in components
                                               and 'text_encoder_3' not in components)

    def text_encoder_class(self, attribute: str):
        from transformers import CLIPTextModel, T5EncoderModel
        return T5EncoderModel if attribute == 'text_encoder_2' else CLIPTextModel

    @torch.no_grad()
    def encode_prompt(self, prompt: str, encoders: dict, tokenizers: dict, config=None) -> TextCondition:
        """As ``FluxPipeline.encode_prompt`` (prompt_2 = prompt, ``max_sequence_length=512``)."""
        clip, t5 = encoders['text_encoder'], encoders['text_encoder_2']
        pooled = clip(token_ids(tokenizers['text_encoder'], prompt, clip), output_hidden_states=False).pooler_output
        hidden = t5(token_ids(tokenizers['text_encoder_2'], prompt, t5, T5_TOKENS), output_hidden_states=False)[0]
        return TextCondition(hidden.to(t5.dtype), pooled.to(clip.dtype))

    # ------------------------------------------------------------------ the denoiser
    def latent_multiple(self, denoiser: nn.Module) -> int:
        return 2  # the 2x2 packing (the transformer's own patch_size is 1)

    def latent_channels(self, config) -> int:
        return int(config['in_channels']) // 4

    def denoiser_input(self, latents: torch.Tensor) -> tuple[torch.Tensor, dict]:
        h, w = latents.shape[-2:]
        return pack_latents(latents), dict(img_ids=latent_image_ids(h, w, latents.device, latents.dtype))

    def check_options(self, config, guidance: float | None) -> None:
        if guidance is not None and not config.get('guidance_embeds', False):
            raise ValueError(f'guidance={guidance}: this FLUX transformer is not guidance-distilled (FLUX.1-schnell has '
                             'no guidance embedding): remove guidance from the backbone config')

    def condition_kwargs(self, text: TextCondition, size: tuple[int, int], config=None,
                         guidance: float | None = None) -> dict:
        kwargs = dict(encoder_hidden_states=text.hidden, pooled_projections=text.pooled,
                      txt_ids=text.hidden.new_zeros(text.hidden.shape[1], 3))
        if config is not None and config.get('guidance_embeds', False):
            g = self.guidance_default if guidance is None else guidance
            kwargs['guidance'] = torch.full((text.hidden.shape[0],), float(g), device=text.hidden.device)
        return kwargs

    def image_output(self, module: nn.Module, output):
        """Double- and single-stream blocks return ``(text tokens, image tokens)``."""
        from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
        if isinstance(module, (FluxTransformerBlock, FluxSingleTransformerBlock)):
            return output[1]
        return super().image_output(module, output)

    # ------------------------------------------------------------------ ControlNets
    @staticmethod
    def _is_xlabs(net: nn.Module) -> bool:
        return getattr(net, 'input_hint_block', None) is not None

    def prepare_controlnet(self, net: nn.Module, denoiser: nn.Module, path: str) -> None:
        for key in ('joint_attention_dim', 'pooled_projection_dim'):
            if net.config.get(key) != denoiser.config.get(key):
                raise ValueError(f'ControlNet {path!r} has {key}={net.config.get(key)}, the FLUX transformer '
                                 f'{denoiser.config.get(key)}: use a ControlNet made for FLUX.1')

    def check_control_mode(self, net: nn.Module, mode: int | None, path: str) -> None:
        """A union ControlNet needs a mode below its ``num_mode`` (its mode embedding has that many rows)."""
        if not getattr(net, 'union', False):
            return super().check_control_mode(net, mode, path)
        modes = net.config.num_mode
        if mode is None or not 0 <= mode < modes:
            got = 'none' if mode is None else f'mode={mode}'
            raise ValueError(f'ControlNet {path!r} is a union ControlNet with {modes} modes: give the branch\'s '
                             f'controlnet a mode in 0..{modes - 1} (it has {got}; InstantX union: canny 0, tile 1, '
                             'depth 2, blur 3, pose 4, gray 5, low quality 6)')

    @torch.no_grad()
    def control_input(self, sd, condition: torch.Tensor, net: nn.Module) -> torch.Tensor:
        """XLabs: the control image in [-1, 1] (its ``input_hint_block`` embeds it); InstantX: through the VAE
        (``(z - shift) * scale``, as ``FluxControlNetPipeline``) and packed; the posterior mode instead of the
        pipeline's unseeded sample, so features are deterministic."""
        x = (condition * 2 - 1)
        if self._is_xlabs(net):
            return x.to(net.dtype)
        x = x.to(sd.vae.dtype).contiguous(memory_format=torch.channels_last)
        z = sd.vae.encode(x).latent_dist.mode().float()
        z = ((z - sd.vae.config.shift_factor) * sd.vae.config.scaling_factor).contiguous()
        return pack_latents(z).to(sd.dtype)

    def controlnet_kwargs(self, net: nn.Module, kwargs: dict, mode: int | None = None) -> dict:
        """The denoiser's kwargs, with guidance as the ControlNet's own config asks (as ``FluxControlNetPipeline``:
        a dev ControlNet on schnell gets the default guidance) and a union ControlNet's mode."""
        b = kwargs['encoder_hidden_states'].shape[0]
        if not net.config.guidance_embeds:
            kwargs = {k: v for k, v in kwargs.items() if k != 'guidance'}
        elif 'guidance' not in kwargs:
            kwargs = dict(kwargs, guidance=torch.full((b,), self.guidance_default,
                                                      device=kwargs['encoder_hidden_states'].device))
        if getattr(net, 'union', False):
            kwargs = dict(kwargs, controlnet_mode=torch.full((b, 1), int(mode), dtype=torch.long,
                                                             device=kwargs['encoder_hidden_states'].device))
        return kwargs

    def split_residuals(self, output, net: nn.Module, denoiser: nn.Module) -> tuple:
        """One residual per double- then single-stream block, as the transformer adds them: XLabs' few
        double-block residuals repeat (``i % n``), InstantX's are spread (``i // ceil(blocks / n)``).
        The list holds references, not copies."""
        doubles, singles = output
        per_block = []
        for samples, blocks, repeat in ((doubles, len(denoiser.transformer_blocks), self._is_xlabs(net)),
                                        (singles, len(denoiser.single_transformer_blocks), False)):
            if not samples:
                per_block += [None] * blocks
                continue
            interval = int(math.ceil(blocks / len(samples)))
            per_block += [samples[i % len(samples)] if repeat else samples[i // interval] for i in range(blocks)]
        return per_block, None

    def residual_kwargs(self, denoiser: nn.Module, down, mid) -> dict:
        n = len(denoiser.transformer_blocks)
        doubles, singles = down[:n], down[n:]
        return dict(controlnet_block_samples=None if doubles[0] is None else doubles,
                    controlnet_single_block_samples=None if not singles or singles[0] is None else singles,
                    controlnet_blocks_repeat=False)  # one residual per block: index // 1

    def tap_select(self, denoiser: nn.Module, down):
        """With ControlNet residuals, a tapped block gives its image tokens *plus its residual*: what the next
        block receives."""
        if down is None:
            return self.image_output
        blocks = [*denoiser.transformer_blocks, *denoiser.single_transformer_blocks]
        return self.select_with_residuals({id(b): r for b, r in zip(blocks, down) if r is not None})

    # ------------------------------------------------------------------ LoRA
    def read_lora(self, path: str, unet_config=None) -> tuple[dict, dict | None, dict | None]:
        return self.lora_pipeline().lora_state_dict(path, return_alphas=True, return_lora_metadata=True)

    def load_transformer_lora(self, state_dict: dict, alphas, model: nn.Module, adapter_name: str, metadata) -> None:
        self.lora_pipeline().load_lora_into_transformer(state_dict, network_alphas=alphas, transformer=model,
                                                        adapter_name=adapter_name, metadata=metadata)

    # ------------------------------------------------------------------ noise
    def noise_level(self, scheduler, timestep: int, seq_len: int | None = None) -> float:
        """The authors' mapping through ``FluxImg2ImgPipeline``'s schedule (sigmas linspace(1, 1/28, 28), shifted
        by the image's ``mu``), strength ``t / 1000``, first step."""
        sigmas = None if scheduler.config.get('use_flow_sigmas', False) else img2img_sigmas()
        return img2img_sigma(scheduler.config, timestep, seq_len, sigmas=sigmas)

    def model_timestep(self, level) -> float:
        return float(level)  # the pipeline passes timestep / 1000 = sigma; the transformer multiplies by 1000

    # ------------------------------------------------------------------ AdaLN
    def block_modulation(self, block: nn.Module, tokens: torch.Tensor, block_kwargs: dict) -> torch.Tensor:
        """DiTF's normalisation: the block's first AdaLN (``norm1`` of a double-stream block, ``norm`` of a
        single-stream one: LayerNorm without affine, then ``(1 + scale) x + shift`` from the block's ``temb``)."""
        norm = block.norm1 if hasattr(block, 'norm1') else block.norm
        return norm(tokens, emb=block_kwargs['temb'])[0]


__all__ = ['FluxFamily', 'T5_TOKENS', 'AUTHORS_GUIDANCE', 'pack_latents', 'unpack_latents', 'latent_image_ids',
           'img2img_sigmas']
