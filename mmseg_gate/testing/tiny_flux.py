"""Write tiny FLUX.1 weights in the standard diffusers layout.

Random but deterministic (seeded), made offline in a few seconds, laid out as real downloads are, so
tests exercise the loading code real weights go through:

    DIR/flux/                    FluxPipeline folder, FLUX.1-dev-shaped: transformer with guidance embedding
                                 (2 double-stream + 3 single-stream blocks, 2 heads x 8, RoPE axes 2/2/4,
                                 64 = 16 latent channels x 2x2 packed input), 16-channel VAE with FLUX's
                                 shift/scale and no quant convs, CLIP text encoder *without* projection (its
                                 pooled output feeds the transformer), T5 encoder with a locally built T5
                                 tokenizer (512 tokens), FLUX.1-dev's flow-matching scheduler (dynamic shifting)
    DIR/flux-schnell/            FluxPipeline folder, FLUX.1-schnell-shaped: no guidance embedding, fixed
                                 shift 1 scheduler (no dynamic shifting), otherwise as DIR/flux
    DIR/flux-controlnet/         FluxControlNetModel, InstantX kind (VAE-encoded, packed control latents):
                                 1 double + 2 single blocks from DIR/flux's transformer, zero layers randomised
    DIR/flux-controlnet-union/   the same with 10 control modes (InstantX's union: controlnet_mode_embedder)
    DIR/flux-controlnet-xlabs/   FluxControlNetModel, XLabs kind: input_hint_block takes the control image in
                                 pixels (8x down to 16 channels, patch_size 2 -> 64 per token), 2 double blocks,
                                 no single blocks, zero layers randomised
    DIR/flux-lora/a.safetensors      diffusers format: attention to_q/k/v/out.0 (double and single blocks),
                                     rank 4, alpha 8
    DIR/flux-lora/b.safetensors      diffusers format: text-stream attention (add_q/k/v_proj, to_add_out) +
                                     image feed-forward, rank 2, and CLIP text_encoder attention
    DIR/flux-lora/kohya.safetensors  kohya sd-scripts format with BFL names (lora_unet_double_blocks_0_img_attn_qkv
                                     ...), rank 4, alpha 2, ss_* metadata
    DIR/flux-lora/xlabs.safetensors  XLabs format (double_blocks.0.processor.qkv_lora1.down.weight ...), rank 4

All LoRA up-projections are random (non-zero) so a test can tell whether one loaded. The kohya file has no
single-block ``linear1`` (fused q/k/v/mlp) entries: diffusers' converter splits those at FLUX.1's real widths
(3072 x 3 + 12288), which a tiny transformer cannot match; single blocks get ``linear2`` and ``modulation_lin``.
VAE weights are random, calibrated as :mod:`.tiny_dit`'s (scaled latents of about unit variance).
``make_tiny_flux`` skips the work when ``DIR/.complete_flux`` exists (a marker of its own, so ``DIR`` can be
the same folder ``make_tiny_sd`` / ``make_tiny_dit`` write to).
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import torch

from .tiny_dit import (TINY_CLIP_L, TINY_T5, _VAE, _metadata, _save_t5_tokenizer, _sort_safetensors_metadata, _t5,
                       _tiny_vae)
from .tiny_models import _randomize_, _save_tokenizer

#: FLUX.1-dev-shaped: 2 heads x 8 (RoPE axes 2 + 2 + 4 = head dim), text states from the tiny T5, pooled from
#: the tiny CLIP's hidden size (FLUX uses CLIP-L's pooled output without projection)
TINY_FLUX_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=3, attention_head_dim=8,
                             num_attention_heads=2, joint_attention_dim=TINY_T5['d_model'],
                             pooled_projection_dim=TINY_CLIP_L['hidden_size'], guidance_embeds=True,
                             axes_dims_rope=(2, 2, 4))
TINY_FLUX_SCHNELL_TRANSFORMER = dict(TINY_FLUX_TRANSFORMER, guidance_embeds=False)
#: FLUX's VAE: 16 latent channels, no quant convs, shift 0.1159 and scale 0.3611
TINY_FLUX_VAE = dict(_VAE, latent_channels=16, sample_size=128, shift_factor=0.1159, scaling_factor=0.3611,
                     use_quant_conv=False, use_post_quant_conv=False, force_upcast=True)
#: black-forest-labs/FLUX.1-dev's scheduler_config.json
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
#: black-forest-labs/FLUX.1-schnell's: fixed shift 1, no resolution-dependent shifting
FLUX_SCHNELL_SCHEDULER = dict(FLUX_DEV_SCHEDULER, shift=1.0, use_dynamic_shifting=False)


def _clip_text(seed: int, vocab_size: int, cfg: dict = TINY_CLIP_L):
    """A tiny ``CLIPTextModel`` (no projection, as FLUX's text_encoder): its pooled output is hidden-size wide."""
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                        **cfg)).eval()


def save_flux_pipeline(path: Path, transformer_cfg: dict, scheduler_cfg: dict, seed: int,
                       vae_cfg: dict = TINY_FLUX_VAE, clip: dict = TINY_CLIP_L, t5: dict = TINY_T5):
    """A seeded random ``FluxTransformer2DModel(**transformer_cfg)`` with its VAE, CLIP, T5, locally built
    tokenizers and a ``FlowMatchEulerDiscreteScheduler(**scheduler_cfg)``, saved as a ``FluxPipeline``
    folder; returns the pipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTokenizer, T5TokenizerFast
    vocab = _save_tokenizer(path / 'tokenizer')
    _save_t5_tokenizer(path / 'tokenizer_2')
    tokenizer_2 = T5TokenizerFast.from_pretrained(str(path / 'tokenizer_2'))
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**transformer_cfg).eval()
    pipe = FluxPipeline(
        transformer=transformer, vae=_tiny_vae(vae_cfg, seed + 1),
        text_encoder=_clip_text(seed + 2, vocab, clip),
        tokenizer=CLIPTokenizer.from_pretrained(str(path / 'tokenizer')),
        text_encoder_2=_t5(seed + 3, len(tokenizer_2), t5), tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_cfg))
    pipe.save_pretrained(str(path))
    return pipe


def _controlnets(out: Path, transformer, seed: int) -> None:
    from diffusers import FluxControlNetModel
    widths = dict(attention_head_dim=transformer.config.attention_head_dim,
                  num_attention_heads=transformer.config.num_attention_heads)
    zero_layers = ('controlnet_blocks', 'controlnet_single_blocks', 'controlnet_x_embedder')

    # InstantX (FLUX.1-dev-Controlnet-Canny): packed VAE latents of the control image added via controlnet_x_embedder
    torch.manual_seed(seed)
    net = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=2,
                                               load_weights_from_transformer=True, **widths)
    _randomize_(net, zero_layers, std=0.05)
    net.save_pretrained(str(out / 'flux-controlnet'))

    # InstantX union: from_transformer has no num_mode, so rebuild with it and take the base weights. The
    # overrides go in as keywords: keys of ``base.config`` listed in its ``_use_default_values`` (num_mode,
    # conditioning_embedding_channels: the defaults from_transformer left) are dropped by from_config
    torch.manual_seed(seed + 1)
    base = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=2,
                                                load_weights_from_transformer=True, **widths)
    net = FluxControlNetModel.from_config(base.config, num_mode=10)
    missing, unexpected = net.load_state_dict(base.state_dict(), strict=False)
    assert net.union and not unexpected and missing == ['controlnet_mode_embedder.weight'], (missing, unexpected)
    _randomize_(net, zero_layers, std=0.05)
    net.save_pretrained(str(out / 'flux-controlnet-union'))

    # XLabs (flux-controlnet-*-diffusers): pixels -> input_hint_block (8x down, 16 channels) -> 2x2 patches of
    # 16 = 64 per token, the packed latent width; 2 double blocks repeated over the transformer's, no single blocks
    torch.manual_seed(seed + 2)
    base = FluxControlNetModel.from_transformer(transformer, num_layers=2, num_single_layers=0,
                                                load_weights_from_transformer=True, **widths)
    net = FluxControlNetModel.from_config(base.config, conditioning_embedding_channels=16, patch_size=2)
    missing, unexpected = net.load_state_dict(base.state_dict(), strict=False)
    assert net.input_hint_block is not None and not unexpected and missing and all(
        k.startswith('input_hint_block.') for k in missing), (missing, unexpected)
    _randomize_(net, zero_layers, std=0.05)
    _init_hint_block_(net.input_hint_block)
    net.save_pretrained(str(out / 'flux-controlnet-xlabs'))


@torch.no_grad()
def _init_hint_block_(block: torch.nn.Module) -> None:
    """About variance-preserving weights for the XLabs hint encoder (8 convolutions, SiLU between them, which
    keeps ~1/2.8 of the variance): with PyTorch's default init the control image's signal shrinks by orders of
    magnitude through it (and conv_out starts at zero), so the control image would barely change the residuals."""
    for name, m in block.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            gain = 1.0 if name == 'conv_out' else 2.8
            m.weight.normal_(std=math.sqrt(gain / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])))
            m.bias.zero_()


def _lora_pair(shape_in: int, shape_out: int, rank: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(down [rank, in], up [out, rank]) with nn.Linear-like magnitudes: random, non-zero."""
    down = torch.randn(rank, shape_in, generator=g) / math.sqrt(shape_in)
    up = torch.randn(shape_out, rank, generator=g) / math.sqrt(rank)
    return down, up


def _kohya(transformer, rank: int = 4, alpha: float = 2.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """sd-scripts' FLUX LoRA (networks/lora_flux.py) with BFL module names."""
    cfg = transformer.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    mlp = transformer.single_transformer_blocks[0].mlp_hidden_dim if cfg.num_single_layers else 4 * inner
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def add(name, n_in, n_out):
        sd[f'{name}.lora_down.weight'], sd[f'{name}.lora_up.weight'] = _lora_pair(n_in, n_out, rank, g)
        sd[f'{name}.alpha'] = torch.tensor(alpha)

    for i in range(cfg.num_layers):
        for stream in ('img', 'txt'):
            p = f'lora_unet_double_blocks_{i}_{stream}'
            add(f'{p}_attn_qkv', inner, 3 * inner)
            add(f'{p}_attn_proj', inner, inner)
            add(f'{p}_mlp_0', inner, 4 * inner)
            add(f'{p}_mlp_2', 4 * inner, inner)
            add(f'{p}_mod_lin', inner, 6 * inner)
    for i in range(cfg.num_single_layers):
        # linear1 (fused q/k/v + mlp, 3 * inner + mlp wide) is left out: diffusers splits it at FLUX.1's widths
        add(f'lora_unet_single_blocks_{i}_linear2', inner + mlp, inner)
        add(f'lora_unet_single_blocks_{i}_modulation_lin', inner, 3 * inner)
    return sd


def _xlabs(transformer, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """XLabs' x-flux LoRA: the double blocks' attention processors, qkv / proj for the image (1) and text (2)
    streams."""
    cfg = transformer.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(cfg.num_layers):
        for s in ('1', '2'):
            for kind, n_out in (('qkv', 3 * inner), ('proj', inner)):
                p = f'double_blocks.{i}.processor.{kind}_lora{s}'
                sd[f'{p}.down.weight'], sd[f'{p}.up.weight'] = _lora_pair(inner, n_out, rank, g)
    return sd


def _loras(out: Path, pipe, seed: int) -> None:
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    lora = out / 'flux-lora'
    lora.mkdir(exist_ok=True)
    specs = (('a', 0, 4, 8.0, ['to_q', 'to_k', 'to_v', 'to_out.0'], False),
             ('b', 1, 2, 2.0, ['add_q_proj', 'add_k_proj', 'add_v_proj', 'to_add_out', 'ff.net.0.proj', 'ff.net.2'],
              True))
    for name, s, rank, alpha, targets, with_text in specs:
        torch.manual_seed(seed + s)
        model = copy.deepcopy(pipe.transformer)
        # init_lora_weights=False: lora_B random, not zero, so a test can tell whether it loaded
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=targets)
        model.add_adapter(config)
        layers = dict(transformer_lora_layers=get_peft_model_state_dict(model),
                      transformer_lora_adapter_metadata=_metadata(config))
        if with_text:
            text = copy.deepcopy(pipe.text_encoder)
            text_config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                                     target_modules=['q_proj', 'k_proj', 'v_proj', 'out_proj'])
            text.add_adapter(text_config)
            layers.update(text_encoder_lora_layers=get_peft_model_state_dict(text),
                          text_encoder_lora_adapter_metadata=_metadata(text_config))
        FluxPipeline.save_lora_weights(str(lora), weight_name=f'{name}.safetensors', safe_serialization=True,
                                       **layers)
        _sort_safetensors_metadata(lora / f'{name}.safetensors')

    save_file(_kohya(pipe.transformer, seed=seed + 2), str(lora / 'kohya.safetensors'),
              metadata={'ss_network_module': 'networks.lora_flux', 'ss_network_dim': '4', 'ss_network_alpha': '2.0',
                        'ss_base_model_version': 'flux1'})
    _sort_safetensors_metadata(lora / 'kohya.safetensors')
    save_file(_xlabs(pipe.transformer, seed=seed + 3), str(lora / 'xlabs.safetensors'))


def make_tiny_flux(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the tiny FLUX.1 assets under ``out`` (see the module docstring) and return ``out``;
    skipped when ``out/.complete_flux`` exists, unless ``overwrite``."""
    out = Path(out)
    done = out / '.complete_flux'
    if done.exists() and not overwrite:
        return out
    out.mkdir(parents=True, exist_ok=True)
    pipe = save_flux_pipeline(out / 'flux', TINY_FLUX_TRANSFORMER, FLUX_DEV_SCHEDULER, seed=40)
    save_flux_pipeline(out / 'flux-schnell', TINY_FLUX_SCHNELL_TRANSFORMER, FLUX_SCHNELL_SCHEDULER, seed=50)
    _controlnets(out, pipe.transformer, seed=60)
    _loras(out, pipe, seed=70)
    done.write_text(json.dumps(['flux', 'flux-schnell', 'flux-controlnet', 'flux-controlnet-union',
                                'flux-controlnet-xlabs', 'flux-lora']))
    return out
