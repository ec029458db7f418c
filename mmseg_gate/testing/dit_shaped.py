"""Real-size random diffusion-transformer assets for ``tools/benchmark.py --preset sd35m / pixart / flux``.

Written once into a cache folder (skipped when ``DIR/.complete`` exists, as ``make_sd15_shaped``), laid
out as :mod:`.tiny_dit`'s folders so the same loading code and benchmark run on both:

    DIR/sd3/                    StableDiffusion3Pipeline folder: an SD3.5-medium-shaped transformer
                                (1536 wide, 24 heads x 64, joint_attention_dim 4096, pooled 2048, dual
                                attention in blocks 0..12, RMS q/k norm, pos_embed_max_size 384) with
                                ``num_layers`` of SD3.5-medium's 24 blocks, SD3's VAE shape (16 latent
                                channels, shift 0.0609, scale 1.5305), tiny stand-in text encoders
    DIR/sd3-controlnet/         SD3ControlNetModel, InstantX kind (VAE-encoded control image, zero pooled
                                projections) with num_layers / 4 blocks (InstantX's SD3 canny: 6 of 24)
    DIR/sd3-lora/a.safetensors  diffusers format, rank 64 / alpha 32 (the paper's rank): image-stream attention
    DIR/sd3-lora/b.safetensors  diffusers format, rank 64 / alpha 32: text-stream attention and feed-forwards
    DIR/pixart-sigma/           PixArtSigmaPipeline folder: PixArt-Sigma-XL-2-512-MS-shaped transformer (1152
                                wide, 16 heads x 72, caption_channels 4096) with ``num_layers`` of its 28
                                blocks, SDXL's VAE shape, a tiny stand-in T5
    DIR/flux/                   FluxPipeline folder: a FLUX.1-dev-shaped transformer (3072 wide, 24 heads x 128,
                                RoPE axes 16/56/56, 64-channel packed input, joint_attention_dim 4096, pooled 768,
                                guidance embedding) with ``num_layers`` of its 19 double-stream and
                                ``num_single_layers`` of its 38 single-stream blocks, FLUX's VAE shape (SD's widths,
                                16 latent channels, shift 0.1159, scale 0.3611, no quant convs), a stand-in CLIP
                                (``CLIPTextModel``, hidden size 768: its pooled output) and T5, FLUX.1-dev's
                                scheduler (dynamic shifting)
    DIR/flux-controlnet/        FluxControlNetModel, InstantX kind (VAE-encoded, packed control image): 1 double + 1
                                single block from the transformer (InstantX's canny: 5 + 10), zero layers randomised
    DIR/flux-lora/a.safetensors diffusers format, rank 64 / alpha 32: attention to_q/k/v (double and single blocks)
                                and to_out.0
    DIR/flux-lora/b.safetensors diffusers format, rank 64 / alpha 32: feed-forwards (double blocks' ff.net.0.proj,
                                ff.net.2; single blocks' proj_mlp, proj_out)

Widths are the real models'; only depth is a parameter (three SD3.5-medium copies, 30 GB in fp32, do not fit
a 24 GiB machine; FLUX.1's 12 B parameters are 48 GB in fp32: a double-stream block is 340 M parameters, a
single-stream one 142 M, the rest 64 M). Text encoders are tiny stand-ins of the right output widths (CLIP pooled 768 + 1280 =
2048, T5 d_model 4096, one layer): prompts are encoded once per branch in either benchmark mode, so their
cost is not what the benchmark compares (FLUX: the stand-in CLIP is 768 wide, since FLUX takes CLIP-L's pooled
output without projection). VAEs are random with :mod:`.tiny_dit`'s calibration (scaled latents
of about unit variance). LoRA up-projections are small (std 0.002) so the adapted transformer stays sane.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .tiny_dit import _save_t5_tokenizer, _sort_safetensors_metadata, _t5, _tiny_vae, save_sd3_pipeline
from .tiny_flux import FLUX_DEV_SCHEDULER, save_flux_pipeline
from .tiny_models import SD15_VAE, _made_once, _randomize_

#: stabilityai/stable-diffusion-3.5-medium's transformer configuration (num_layers replaced by the maker's)
SD35M_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                         num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                         pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                         dual_attention_layers=tuple(range(13)), qk_norm='rms_norm')
#: SD3's VAE: SD's encoder/decoder widths, 16 latent channels, no quant convs
SD3_VAE = dict(SD15_VAE, latent_channels=16, sample_size=1024, shift_factor=0.0609, scaling_factor=1.5305,
               use_quant_conv=False, use_post_quant_conv=False, force_upcast=True)
#: SDXL's VAE (PixArt-Sigma ships it)
SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
#: PixArt-alpha/PixArt-Sigma-XL-2-512-MS's transformer configuration (num_layers replaced by the maker's)
PIXART_SIGMA_XL = dict(sample_size=64, patch_size=2, in_channels=4, out_channels=8, num_layers=28,
                       attention_head_dim=72, num_attention_heads=16, cross_attention_dim=1152, caption_channels=4096,
                       norm_type='ada_norm_single', norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True,
                       activation_fn='gelu-approximate', num_embeds_ada_norm=1000, use_additional_conditions=False)
#: black-forest-labs/FLUX.1-dev's transformer configuration (num_layers / num_single_layers replaced by the maker's)
FLUX_DEV_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                            guidance_embeds=True, axes_dims_rope=(16, 56, 56))
#: FLUX.1's VAE: SD's encoder/decoder widths, 16 latent channels, no quant convs
FLUX_VAE = dict(SD15_VAE, latent_channels=16, sample_size=1024, shift_factor=0.1159, scaling_factor=0.3611,
                use_quant_conv=False, use_post_quant_conv=False, force_upcast=True)
#: stand-in text encoders with the real output widths
STANDIN_CLIP_L = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=77, hidden_act='quick_gelu', projection_dim=768)
STANDIN_CLIP_G = dict(STANDIN_CLIP_L, hidden_act='gelu', projection_dim=1280)
#: FLUX's CLIP-L without projection: its pooled output is hidden-size (768) wide
STANDIN_FLUX_CLIP = dict(STANDIN_CLIP_L, hidden_size=768, num_hidden_layers=1)
STANDIN_T5 = dict(d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=2, relative_attention_num_buckets=32,
                  relative_attention_max_distance=128, feed_forward_proj='gated-gelu', dropout_rate=0.0,
                  layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False)
#: the paper's LoRA rank / alpha
LORA_RANK, LORA_ALPHA, LORA_UP_STD = 64, 32.0, 0.002
SD3_LORA_TARGETS = dict(a=['to_q', 'to_k', 'to_v', 'to_out.0'],
                        b=['add_q_proj', 'add_k_proj', 'add_v_proj', 'to_add_out', 'ff.net.0.proj', 'ff.net.2'])


def flux_lora_targets(single_blocks: int) -> dict[str, list[str]]:
    """a: attention; b: feed-forwards (double blocks' ``ff``, single blocks' ``proj_mlp`` and ``proj_out``, named
    per block: a bare ``proj_out`` would also match the transformer's final output layer)."""
    return dict(a=['to_q', 'to_k', 'to_v', 'to_out.0'],
                b=['ff.net.0.proj', 'ff.net.2', 'proj_mlp',
                   *(f'single_transformer_blocks.{i}.proj_out' for i in range(single_blocks))])


def sd35m_config(num_layers: int) -> dict:
    return dict(SD35M_TRANSFORMER, num_layers=num_layers,
                dual_attention_layers=tuple(i for i in SD35M_TRANSFORMER['dual_attention_layers'] if i < num_layers))


def flux_dev_config(double_blocks: int, single_blocks: int) -> dict:
    return dict(FLUX_DEV_TRANSFORMER, num_layers=double_blocks, num_single_layers=single_blocks)


@torch.no_grad()
def _write_sd35m(out: Path, num_layers: int, seed: int = 40) -> None:
    from diffusers import SD3ControlNetModel, StableDiffusion3Pipeline
    sd3 = out / 'sd3'
    transformer = save_sd3_pipeline(sd3, sd35m_config(num_layers), seed, SD3_VAE, STANDIN_CLIP_L, STANDIN_CLIP_G,
                                    STANDIN_T5).transformer

    torch.manual_seed(seed + 5)
    net = SD3ControlNetModel.from_transformer(transformer, num_layers=max(1, num_layers // 4),
                                              num_extra_conditioning_channels=0)
    _randomize_(net, ('controlnet_blocks', 'pos_embed_input'), std=0.01)
    net.save_pretrained(str(out / 'sd3-controlnet'))
    del net

    _write_loras(out / 'sd3-lora', StableDiffusion3Pipeline, transformer, SD3_LORA_TARGETS, seed)


@torch.no_grad()
def _write_loras(folder: Path, pipeline_class, transformer, targets: dict[str, list[str]], seed: int) -> None:
    """Rank-64 / alpha-32 diffusers-format transformer LoRAs ``folder/{name}.safetensors``, up-projections of
    std 0.002 (adapters are added to ``transformer``)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    folder.mkdir(exist_ok=True)
    for i, (name, modules) in enumerate(targets.items()):
        torch.manual_seed(seed + 6 + i)
        config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, init_lora_weights=False, target_modules=modules)
        transformer.add_adapter(config, adapter_name=name)
        layers = get_peft_model_state_dict(transformer, adapter_name=name)
        g = torch.Generator().manual_seed(seed + 16 + i)
        layers = {k: torch.randn(v.shape, generator=g) * LORA_UP_STD if 'lora_B' in k else v.clone()
                  for k, v in layers.items()}
        metadata = config.to_dict()
        metadata['target_modules'] = sorted(metadata['target_modules'])
        pipeline_class.save_lora_weights(str(folder), weight_name=f'{name}.safetensors', safe_serialization=True,
                                         transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata)
        _sort_safetensors_metadata(folder / f'{name}.safetensors')


@torch.no_grad()
def _write_pixart_sigma(out: Path, num_layers: int, seed: int = 50) -> None:
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5TokenizerFast
    folder = out / 'pixart-sigma'
    _save_t5_tokenizer(folder / 'tokenizer')
    tokenizer = T5TokenizerFast.from_pretrained(str(folder / 'tokenizer'))
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(**dict(PIXART_SIGMA_XL, num_layers=num_layers)).eval()
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=_t5(seed + 1, len(tokenizer), STANDIN_T5),
                               transformer=transformer, vae=_tiny_vae(SDXL_VAE, seed + 2),
                               scheduler=DPMSolverMultistepScheduler())
    pipe.save_pretrained(str(folder))


@torch.no_grad()
def _write_flux_dev(out: Path, double_blocks: int, single_blocks: int, seed: int = 60) -> None:
    from diffusers import FluxControlNetModel, FluxPipeline
    transformer = save_flux_pipeline(out / 'flux', flux_dev_config(double_blocks, single_blocks), FLUX_DEV_SCHEDULER,
                                     seed, FLUX_VAE, STANDIN_FLUX_CLIP, STANDIN_T5).transformer
    torch.manual_seed(seed + 5)
    net = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1,
                                               attention_head_dim=FLUX_DEV_TRANSFORMER['attention_head_dim'],
                                               num_attention_heads=FLUX_DEV_TRANSFORMER['num_attention_heads'])
    _randomize_(net, ('controlnet_blocks', 'controlnet_single_blocks', 'controlnet_x_embedder'), std=0.01)
    net.save_pretrained(str(out / 'flux-controlnet'))
    del net
    _write_loras(out / 'flux-lora', FluxPipeline, transformer, flux_lora_targets(single_blocks), seed)


def make_sd35m_shaped(out: str | os.PathLike, num_layers: int = 24) -> Path:
    """SD3.5-medium-shaped random transformer (``num_layers`` of its 24 blocks; ~0.1 B parameters and
    0.4 GB a block in fp32, plus a 0.9 GB positional-embedding buffer), VAE, InstantX-kind ControlNet and
    two rank-64 LoRAs under ``out`` (written once)."""
    return _made_once(out, lambda o: _write_sd35m(o, num_layers))


def make_pixart_sigma_shaped(out: str | os.PathLike, num_layers: int = 28) -> Path:
    """PixArt-Sigma-XL-2-512-MS-shaped random transformer (``num_layers`` of its 28 blocks; ~21 M parameters
    a block) and SDXL-shaped VAE under ``out`` (written once)."""
    return _made_once(out, lambda o: _write_pixart_sigma(o, num_layers))


def make_flux_shaped(out: str | os.PathLike, double_blocks: int = 19, single_blocks: int = 38) -> Path:
    """FLUX.1-dev-shaped random transformer (``double_blocks`` of its 19 double-stream blocks, ~340 M parameters
    and 1.36 GB each in fp32, ``single_blocks`` of its 38 single-stream ones, ~142 M and 0.57 GB each, plus 64 M
    in embeddings and the output layers), FLUX's VAE shape, an InstantX-kind ControlNet (1 + 1 blocks, 0.55 B)
    and two rank-64 LoRAs under ``out`` (written once)."""
    return _made_once(out, lambda o: _write_flux_dev(o, double_blocks, single_blocks))


__all__ = ['make_sd35m_shaped', 'make_pixart_sigma_shaped', 'make_flux_shaped', 'sd35m_config', 'flux_dev_config',
           'flux_lora_targets', 'SD35M_TRANSFORMER', 'PIXART_SIGMA_XL', 'FLUX_DEV_TRANSFORMER', 'FLUX_VAE']
