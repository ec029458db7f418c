"""Write tiny diffusion-transformer (SD3 / PixArt; FLUX: :mod:`.tiny_flux`) weights in the standard diffusers layout.

Random but deterministic (seeded), made offline in a few seconds, laid out as real downloads are, so
tests exercise the loading code real weights go through:

    DIR/sd3/                StableDiffusion3Pipeline folder: SD3.5-medium-shaped transformer (dual attention
                            in block 0, RMS q/k norm), 16-channel VAE with SD3's shift/scale, two CLIPs with
                            projection, a T5 encoder with a locally built T5 tokenizer, flow-matching scheduler
    DIR/sd3-controlnet/     SD3ControlNetModel (InstantX kind: VAE-encoded control image, zero pooled
                            projections) from DIR/sd3's transformer, zero-initialised layers randomised
    DIR/sd3-lora/a.safetensors  diffusers format, transformer image-stream attention (to_q/k/v/out.0), rank 4
    DIR/sd3-lora/b.safetensors  diffusers format, transformer text-stream attention (add_q/k/v_proj, to_add_out)
                                + feed-forward, rank 2, and CLIP text_encoder attention
    DIR/pixart-sigma/       PixArtSigmaPipeline folder (sample_size 32 as PixArt-Sigma-256: the pipeline's
                            resolution binning accepts it), SDXL-like 4-channel VAE, the tiny T5
    DIR/pixart-alpha/       PixArtAlphaPipeline folder (sample_size 128, resolution/aspect-ratio conditions,
                            as PixArt-XL-2-1024-MS), SD-like 4-channel VAE, the tiny T5

VAE weights are random (not trained); their encoders' output layers are rescaled so that scaled latents
have about unit variance with the real scaling/shift factors and a small posterior standard deviation.
``make_tiny_dit`` skips the work when ``DIR/.complete_dit`` exists (a marker of its own, so ``DIR`` can be
the same folder ``make_tiny_sd`` writes to).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .tiny_models import _randomize_, _save_tokenizer

#: tiny CLIP-L / CLIP-G stand-ins (different widths, as SD3's 768 / 1280), projections as wide as hidden
TINY_CLIP_L = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=77, hidden_act='quick_gelu', projection_dim=32)
TINY_CLIP_G = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=77, hidden_act='gelu', projection_dim=48)
#: a tiny T5 v1.1 encoder (gated GELU, relative positions): d_model 96 >= CLIP concat width 32 + 48
TINY_T5 = dict(d_model=96, d_kv=16, d_ff=128, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
               relative_attention_max_distance=128, feed_forward_proj='gated-gelu', dropout_rate=0.0,
               layer_norm_epsilon=1e-6, is_encoder_decoder=False, use_cache=False)
#: SD3.5-medium-shaped: dual attention (block 0 here), RMS q/k norm
TINY_SD3_TRANSFORMER = dict(
    sample_size=16, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=8, num_attention_heads=2,
    joint_attention_dim=TINY_T5['d_model'], caption_projection_dim=16,
    pooled_projection_dim=TINY_CLIP_L['projection_dim'] + TINY_CLIP_G['projection_dim'], out_channels=16,
    pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm='rms_norm')
_VAE = dict(in_channels=3, out_channels=3, block_out_channels=(16, 16, 32, 32),  # 4 blocks -> 8x down-sampling
            down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4,
            layers_per_block=1, norm_num_groups=8)
#: SD3's VAE: 16 latent channels, no quant convs, shift 0.0609 and scale 1.5305
TINY_SD3_VAE = dict(_VAE, latent_channels=16, sample_size=128, shift_factor=0.0609, scaling_factor=1.5305,
                    use_quant_conv=False, use_post_quant_conv=False, force_upcast=True)
#: PixArt-Sigma ships SDXL's VAE (scale 0.13025), PixArt-alpha SD's ft-EMA VAE (0.18215)
TINY_SDXL_VAE = dict(_VAE, latent_channels=4, sample_size=256, scaling_factor=0.13025, force_upcast=True)
TINY_SD_VAE = dict(_VAE, latent_channels=4, sample_size=256, scaling_factor=0.18215)
_PIXART = dict(patch_size=2, in_channels=4, out_channels=8, num_layers=3, attention_head_dim=8, num_attention_heads=2,
               cross_attention_dim=16, caption_channels=TINY_T5['d_model'], norm_type='ada_norm_single',
               norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True, activation_fn='gelu-approximate',
               num_embeds_ada_norm=1000)
#: PixArt-Sigma-XL-2-256-shaped (sample_size 32: the pipeline bins resolutions for 32/64/128/256 only)
TINY_PIXART_SIGMA = dict(_PIXART, sample_size=32, use_additional_conditions=False)
#: PixArt-XL-2-1024-MS-shaped: sample_size 128 is what makes the pipeline pass resolution and aspect ratio;
#: their embeddings are inner_dim // 3 wide each (3 of them: height, width, aspect ratio), so 3 heads of 8
TINY_PIXART_ALPHA = dict(_PIXART, sample_size=128, use_additional_conditions=True, num_attention_heads=3,
                         cross_attention_dim=24)

_WORDS = ('a', 'an', 'the', 'of', 'photo', 'picture', 'with', 'and', 'in', 'on', 'street', 'room', 'car', 'tree',
          'sky', 'road', 'person', 'house', 'cat', 'dog')


def _save_t5_tokenizer(path: Path) -> None:
    """A T5 (Unigram, sentencepiece-style '▁' word starts) tokenizer built locally: <pad>=0, </s>=1, <unk>=2,
    then single characters (every ASCII text tokenizes) and a few whole words."""
    from transformers import T5TokenizerFast
    chars = [chr(c) for c in range(33, 127)]
    vocab = [('<pad>', 0.0), ('</s>', 0.0), ('<unk>', 0.0), ('▁', -2.0)]
    vocab += [('▁' + w, -3.0) for w in _WORDS]
    vocab += [('▁' + c, -6.0) for c in chars] + [(c, -5.0) for c in chars]
    T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512).save_pretrained(str(path))


def _t5(seed: int, vocab_size: int, cfg: dict = TINY_T5):
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                   **cfg)).eval()


@torch.no_grad()
def _tiny_vae(cfg: dict, seed: int):
    """A random AutoencoderKL whose encoder output is rescaled: ``(mode - shift) * scale`` has unit standard
    deviation on picture-like inputs and the posterior std is ~0.02 (log-variance ~ -8), as trained VAEs'."""
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    vae = AutoencoderKL(**cfg).eval()
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(8, 3, 8, 8, generator=g) * 2 - 1  # smooth regions and edges
    images = torch.nn.functional.interpolate(coarse, size=64, mode='nearest')
    # the layer that outputs [mean, logvar]: quant_conv where the VAE has one (SD/SDXL), else encoder.conv_out
    conv, c = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out, cfg['latent_channels']
    mean = vae.encode(images).latent_dist.mean
    target = 1.0 / cfg['scaling_factor']
    conv.weight[:c] *= target / mean.std().item()
    conv.bias[:c] = (conv.bias[:c] - mean.mean()) * target / mean.std().item() + cfg.get('shift_factor', 0.0)
    conv.weight[c:] *= 0.01
    conv.bias[c:] = -8.0
    return vae


def _clip(seed: int, vocab_size: int, cfg: dict):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1,
                                                      pad_token_id=1, **cfg)).eval()


def _metadata(config) -> dict:
    """``LoraConfig.to_dict()`` with ``target_modules`` sorted: a set's order varies with the hash seed, and
    the files should be byte-identical from run to run."""
    metadata = config.to_dict()
    metadata['target_modules'] = sorted(metadata['target_modules'])
    return metadata


def _sort_safetensors_metadata(path: Path) -> None:
    """safetensors writes its ``__metadata__`` map in a per-process random order; sort it in place (same header
    length, so the tensor offsets stay valid) to make the file byte-identical from run to run."""
    import struct
    data = bytearray(path.read_bytes())
    n = struct.unpack('<Q', data[:8])[0]
    header = json.loads(data[8:8 + n])
    header['__metadata__'] = dict(sorted(header.get('__metadata__', {}).items()))
    text = json.dumps(header, separators=(',', ':'), ensure_ascii=False).encode()
    if len(text) <= n:
        data[8:8 + n] = text + b' ' * (n - len(text))
        path.write_bytes(bytes(data))


def save_sd3_pipeline(sd3: Path, transformer_cfg: dict, seed: int, vae_cfg: dict = TINY_SD3_VAE,
                      clip_l: dict = TINY_CLIP_L, clip_g: dict = TINY_CLIP_G, t5: dict = TINY_T5):
    """A seeded random ``SD3Transformer2DModel(**transformer_cfg)`` with its VAE, two CLIPs, T5, locally built
    tokenizers and SD3's flow-matching scheduler (shift 3), saved as a ``StableDiffusion3Pipeline`` folder
    (shared by the tiny assets and the real-size benchmark assets); returns the pipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer, T5TokenizerFast
    vocab = _save_tokenizer(sd3 / 'tokenizer')
    _save_tokenizer(sd3 / 'tokenizer_2')
    _save_t5_tokenizer(sd3 / 'tokenizer_3')
    tokenizer_3 = T5TokenizerFast.from_pretrained(str(sd3 / 'tokenizer_3'))
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**transformer_cfg).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=_tiny_vae(vae_cfg, seed + 1),
        text_encoder=_clip(seed + 2, vocab, clip_l),
        tokenizer=CLIPTokenizer.from_pretrained(str(sd3 / 'tokenizer')),
        text_encoder_2=_clip(seed + 3, vocab, clip_g),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(sd3 / 'tokenizer_2')),
        text_encoder_3=_t5(seed + 4, len(tokenizer_3), t5), tokenizer_3=tokenizer_3,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0))
    pipe.save_pretrained(str(sd3))
    return pipe


def _write_sd3(out: Path, seed: int = 20) -> None:
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    sd3 = out / 'sd3'
    pipe = save_sd3_pipeline(sd3, TINY_SD3_TRANSFORMER, seed)
    transformer = pipe.transformer

    from diffusers import SD3ControlNetModel
    torch.manual_seed(seed + 5)
    # InstantX-style (SD3-Controlnet-Canny): control image through the VAE, no extra channels, zero pooled
    net = SD3ControlNetModel.from_transformer(transformer, num_layers=2, num_extra_conditioning_channels=0)
    _randomize_(net, ('controlnet_blocks', 'pos_embed_input'), std=0.05)
    net.save_pretrained(str(out / 'sd3-controlnet'))

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    (out / 'sd3-lora').mkdir(exist_ok=True)
    specs = (('a', 6, 4, 8.0, ['to_q', 'to_k', 'to_v', 'to_out.0'], False),
             ('b', 7, 2, 2.0, ['add_q_proj', 'add_k_proj', 'add_v_proj', 'to_add_out', 'ff.net.0.proj', 'ff.net.2'],
              True))
    for name, s, rank, alpha, targets, with_text in specs:
        torch.manual_seed(seed + s)
        model = SD3Transformer2DModel.from_pretrained(str(sd3), subfolder='transformer')
        # init_lora_weights=False: lora_B random, not zero, so a test can tell whether it loaded
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=targets)
        model.add_adapter(config)
        layers = dict(transformer_lora_layers=get_peft_model_state_dict(model),
                      transformer_lora_adapter_metadata=_metadata(config))
        if with_text:
            text = pipe.text_encoder
            text_config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                                     target_modules=['q_proj', 'k_proj', 'v_proj', 'out_proj'])
            text.add_adapter(text_config)
            layers.update(text_encoder_lora_layers=get_peft_model_state_dict(text),
                          text_encoder_lora_adapter_metadata=_metadata(text_config))
        StableDiffusion3Pipeline.save_lora_weights(str(out / 'sd3-lora'), weight_name=f'{name}.safetensors',
                                                   safe_serialization=True, **layers)
        _sort_safetensors_metadata(out / 'sd3-lora' / f'{name}.safetensors')


def _write_pixart(out: Path, seed: int = 30) -> None:
    from diffusers import (DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline,
                           PixArtTransformer2DModel)
    from transformers import T5TokenizerFast
    variants = (('pixart-sigma', PixArtSigmaPipeline, TINY_PIXART_SIGMA, TINY_SDXL_VAE),
                ('pixart-alpha', PixArtAlphaPipeline, TINY_PIXART_ALPHA, TINY_SD_VAE))
    for i, (folder, cls, cfg, vae_cfg) in enumerate(variants):
        _save_t5_tokenizer(out / folder / 'tokenizer')
        tokenizer = T5TokenizerFast.from_pretrained(str(out / folder / 'tokenizer'))
        torch.manual_seed(seed + 10 * i)
        transformer = PixArtTransformer2DModel(**cfg).eval()
        # PixArt's conversion scripts ship the default DPM-Solver++ (linear betas 1e-4..0.02, epsilon)
        pipe = cls(tokenizer=tokenizer, text_encoder=_t5(seed + 10 * i + 1, len(tokenizer)), transformer=transformer,
                   vae=_tiny_vae(vae_cfg, seed + 10 * i + 2), scheduler=DPMSolverMultistepScheduler())
        pipe.save_pretrained(str(out / folder))


def make_tiny_dit(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the tiny SD3 / PixArt assets under ``out`` (see the module docstring) and the FLUX ones
    (:func:`.tiny_flux.make_tiny_flux`), and return ``out``; each skipped when its marker (``.complete_dit``,
    ``.complete_flux``) exists, unless ``overwrite``."""
    from .tiny_flux import make_tiny_flux
    out = Path(out)
    done = out / '.complete_dit'
    if not done.exists() or overwrite:
        out.mkdir(parents=True, exist_ok=True)
        _write_sd3(out)
        _write_pixart(out)
        done.write_text(json.dumps(['sd3', 'sd3-controlnet', 'sd3-lora', 'pixart-sigma', 'pixart-alpha']))
    return make_tiny_flux(out, overwrite=overwrite)  # the FLUX assets: flux/, flux-controlnet*/, flux-lora/
