"""Write tiny Stable-Diffusion-shaped weights in the standard diffusers layout.

Everything is random but deterministic (seeded), made offline in seconds, and
saved exactly as real downloads are laid out, so tests and the demo exercise the
same loading code as real weights:

    DIR/sd/                 diffusers pipeline folder with SD1.5's block structure
    DIR/sd2/                SD2-shaped variant (linear projections, wider text states)
    DIR/sd2v/               SD2-768-shaped: the same UNet as sd2/, v-prediction scheduler
    DIR/ip-adapter/         IP-Adapter for DIR/sd's UNet (ip-adapter_tiny.safetensors) + CLIP image_encoder/
    DIR/sdxl/               SDXL-shaped pipeline (two text encoders, text_time added conditions)
    DIR/sdxl-controlnet/    ControlNetModel made from DIR/sdxl's UNet
    DIR/sdxl-lora/a.safetensors  diffusers format (UNet + text_encoder_2)
    DIR/sdxl-lora/b.safetensors  kohya format (UNet attention + resnet convs + both text encoders)
    DIR/controlnet-canny/   ControlNetModel made from DIR/sd's UNet
    DIR/lora/a.safetensors  diffusers/peft format (UNet attention layers)
    DIR/lora/b.safetensors  kohya/LyCORIS LoCon format (UNet attention + resnet convs + text encoder)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

#: A tiny SD1.5: same block types and depth, widths cut down (~2M UNet params).
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=1,
    down_block_types=('CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(32, 32, 64, 64),  # 4 blocks -> 8x down-sampling, as SD's VAE
    down_block_types=('DownEncoderBlock2D',) * 4,
    up_block_types=('UpDecoderBlock2D',) * 4,
    layers_per_block=1,
    norm_num_groups=32,
    sample_size=64,
)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, hidden_act='quick_gelu', projection_dim=32)
#: A tiny SDXL: SDXL's block types, linear projections, deeper transformers at the lowest resolution,
#: ``text_time`` added conditions (6 time ids x 8 + pooled 32), text states 32 + 32 wide.
TINY_SDXL_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
    down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'),
    up_block_types=('CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'),
    transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4), use_linear_projection=True,
    addition_embed_type='text_time', addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
    cross_attention_dim=64, norm_num_groups=32)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _save_tokenizer(path: Path) -> int:
    """A byte-level CLIP BPE vocabulary generated locally (no merges): every text tokenizes."""
    from transformers import CLIPTokenizer
    chars = list(_bytes_to_unicode().values())
    vocab = {'<|startoftext|>': 0, '<|endoftext|>': 1}
    for token in chars + [c + '</w>' for c in chars]:
        vocab[token] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    tok.save_pretrained(str(path))
    return len(vocab)


def _randomize_(module: torch.nn.Module, names: tuple[str, ...], std: float = 0.05) -> None:
    """ControlNet's zero convolutions start at zero; randomise them so its residuals are non-zero."""
    for name, p in module.named_parameters():
        if any(name.startswith(n) for n in names):
            torch.nn.init.normal_(p, std=std)


def _pretrained_tiny_vae(vae: torch.nn.Module, steps: int = 80) -> torch.nn.Module:
    """A few seconds of autoencoder training on synthetic scenes, so that decode(encode(x)) resembles x
    (Img2Img in tools/gate_guideline.py needs that to mean anything) and latents carry the picture."""
    from .synthetic_data import ADE_CLASSES, _scene
    rng = np.random.default_rng(0)
    data = torch.from_numpy(np.stack([_scene(rng, 64, 64, ADE_CLASSES)[0][..., ::-1] for _ in range(32)]))
    data = data.permute(0, 3, 1, 2).float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(steps):
        x = data[torch.randint(0, len(data), (8,), generator=g)]
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        loss = (rec - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return vae.eval()


@torch.no_grad()
def _calibrated_vae(vae: torch.nn.Module) -> torch.nn.Module:
    """Set ``scaling_factor`` so latents have unit variance, as SD's 0.18215 does for its trained VAE.

    With SD's factor a random VAE's latents are ~20x smaller than the noise added at t=50 and the
    image content all but vanishes from the features; calibrated, tiny models learn like real ones.
    """
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(16, 3, 8, 8, generator=g) * 2 - 1   # picture-like: smooth regions and edges
    images = torch.nn.functional.interpolate(coarse, size=64, mode='nearest')
    std = vae.encode(images).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    return vae


#: trained tiny VAE weights by architecture: SD's and SDXL's tiny VAEs share one (their training is most of the
#: assets' build time)
_TRAINED_VAES: dict[str, dict] = {}


def _tiny_vae(cfg: dict, calibrate: bool, train: bool) -> torch.nn.Module:
    import json
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(**cfg)
    if train:
        arch = json.dumps({k: v for k, v in cfg.items() if k not in ('force_upcast', 'scaling_factor')}, sort_keys=True)
        if arch not in _TRAINED_VAES:
            _TRAINED_VAES[arch] = {k: v.clone() for k, v in _pretrained_tiny_vae(vae).state_dict().items()}
        vae.load_state_dict(_TRAINED_VAES[arch])
        vae.eval()
    return _calibrated_vae(vae) if calibrate else vae


def _save_pipeline(out: Path, unet_cfg: dict, text_cfg: dict, seed: int, vae_cfg: dict = TINY_VAE,
                   calibrate_vae: bool = True, train_vae: bool = True, prediction_type: str = 'epsilon',
                   text_cfg_2: dict | None = None) -> None:
    """An SD1/2 pipeline folder, or an SDXL one when ``text_cfg_2`` (the second text encoder) is given."""
    from diffusers import (EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    vocab_size = _save_tokenizer(out / 'tokenizer')
    tokenizer = CLIPTokenizer.from_pretrained(str(out / 'tokenizer'))
    text = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text, **text_cfg))
    # SD1.5's (PNDM) and SDXL's (Euler) scheduler configurations: the same scaled-linear betas
    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear', num_train_timesteps=1000,
                 steps_offset=1, prediction_type=prediction_type)
    parts = dict(unet=UNet2DConditionModel(**unet_cfg), vae=_tiny_vae(vae_cfg, calibrate_vae, train_vae),
                 text_encoder=text_encoder, tokenizer=tokenizer)
    if text_cfg_2 is None:
        pipe = StableDiffusionPipeline(**parts, scheduler=PNDMScheduler(skip_prk_steps=True, **betas),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        _save_tokenizer(out / 'tokenizer_2')
        pipe = StableDiffusionXLPipeline(
            **parts, text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text, **text_cfg_2)),
            tokenizer_2=CLIPTokenizer.from_pretrained(str(out / 'tokenizer_2')),
            scheduler=EulerDiscreteScheduler(timestep_spacing='leading', **betas))
    pipe.save_pretrained(str(out))


def _save_controlnet(sd: Path, out: Path, seed: int, cond_channels: tuple = (8, 16, 16, 32)) -> None:
    from diffusers import ControlNetModel, UNet2DConditionModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(sd), subfolder='unet')
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=cond_channels)
    _randomize_(net, ('controlnet_down_blocks', 'controlnet_mid_block', 'controlnet_cond_embedding.conv_out'))
    net.save_pretrained(str(out))


def _lora_targets(model: torch.nn.Module, suffixes: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules()
            if n.endswith(suffixes) and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def _save_lora_diffusers(sd: Path, path: Path, seed: int, rank: int = 4, alpha: float = 8.0,
                         text_encoders: tuple[str, ...] = ()) -> None:
    """diffusers/peft format, as written by ``save_lora_weights`` (alpha kept in the metadata); the
    pipeline class (SD or SDXL) follows the folder, ``text_encoders`` get adapters too."""
    import diffusers
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(sd), subfolder='unet')
    # init_lora_weights=False: lora_B random, not zero, so a test can tell whether it loaded
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                        target_modules=['to_q', 'to_k', 'to_v', 'to_out.0'])
    unet.add_adapter(config)
    layers = dict(unet_lora_layers=get_peft_model_state_dict(unet), unet_lora_adapter_metadata=config.to_dict())
    for subfolder in text_encoders:
        text = CLIPTextModel.from_pretrained(str(sd), subfolder=subfolder)
        text_config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                                 target_modules=['q_proj', 'k_proj', 'v_proj', 'out_proj'])
        text.add_adapter(text_config)
        layers[f'{subfolder}_lora_layers'] = get_peft_model_state_dict(text)
        layers[f'{subfolder}_lora_adapter_metadata'] = text_config.to_dict()
    pipeline = json.loads((sd / 'model_index.json').read_text())['_class_name']
    getattr(diffusers, pipeline).save_lora_weights(str(path.parent), weight_name=path.name, safe_serialization=True,
                                                   **layers)


def _save_lora_kohya(sd: Path, path: Path, seed: int, rank: int = 4, alpha: float = 2.0, conv_rank: int | None = None,
                     up_scale: float = 0.2, text_prefixes: dict | None = None) -> None:
    """kohya/LyCORIS LoCon key format: ``lora_unet_<module_path>.{lora_down,lora_up}.weight`` + ``.alpha``.

    Like the paper's adapters it covers attention projections, resnet convolutions (3x3 'LoCon'
    down-projections) and the text encoder(s) (``text_prefixes``: subfolder -> kohya prefix; SDXL's
    are ``lora_te1_`` and ``lora_te2_``).
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel
    g = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(sd), subfolder='unet')
    tensors: dict[str, torch.Tensor] = {}

    def add(prefix: str, name: str, module: torch.nn.Module) -> None:
        key = prefix + name.replace('.', '_')
        if isinstance(module, torch.nn.Conv2d):
            r = conv_rank or rank
            down = torch.randn(r, module.in_channels, *module.kernel_size, generator=g)
            up = torch.randn(module.out_channels, r, 1, 1, generator=g)
        else:
            down = torch.randn(rank, module.in_features, generator=g)
            up = torch.randn(module.out_features, rank, generator=g)
        tensors[key + '.lora_down.weight'] = down / down[0].numel() ** 0.5
        tensors[key + '.lora_up.weight'] = up * up_scale
        tensors[key + '.alpha'] = torch.tensor(alpha)

    for name, module in _lora_targets(unet, ('to_q', 'to_k', 'to_v', 'to_out.0', 'conv1', 'conv2')).items():
        add('lora_unet_', name, module)
    for subfolder, prefix in (text_prefixes or {'text_encoder': 'lora_te_'}).items():
        text = CLIPTextModel.from_pretrained(str(sd), subfolder=subfolder)
        for name, module in _lora_targets(text, ('q_proj', 'k_proj', 'v_proj', 'out_proj')).items():
            # kohya names text-encoder layers after transformers 4.x's CLIPTextModel ('text_model.' prefix)
            add(prefix, 'text_model.' + name.removeprefix('text_model.'), module)
    save_file(tensors, str(path), metadata={'ss_network_module': 'lycoris.kohya', 'ss_network_dim': str(rank),
                                            'ss_network_alpha': str(alpha)})


def make_tiny_sdxl(out: str | os.PathLike) -> None:
    """The SDXL-shaped assets: ``sdxl/``, ``sdxl-controlnet/``, ``sdxl-lora/{a,b}.safetensors``."""
    out = Path(out)
    text = dict(TINY_TEXT, hidden_act='gelu')
    _save_pipeline(out / 'sdxl', TINY_SDXL_UNET, text, seed=5, text_cfg_2=text,
                   vae_cfg=dict(TINY_VAE, force_upcast=True))  # as SDXL's VAE: fp16 overflows
    _save_controlnet(out / 'sdxl', out / 'sdxl-controlnet', seed=6)
    (out / 'sdxl-lora').mkdir(exist_ok=True)
    _save_lora_diffusers(out / 'sdxl', out / 'sdxl-lora' / 'a.safetensors', seed=7, text_encoders=('text_encoder_2',))
    _save_lora_kohya(out / 'sdxl', out / 'sdxl-lora' / 'b.safetensors', seed=8,
                     text_prefixes={'text_encoder': 'lora_te1_', 'text_encoder_2': 'lora_te2_'})


#: a tiny CLIP image encoder (224 input, as CLIPImageProcessor gives) and h94's SD1.5 one (ViT-H/14)
TINY_IMAGE_ENCODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          image_size=224, patch_size=32, projection_dim=32)
VIT_H_IMAGE_ENCODER = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=1024, hidden_act='gelu')


def _save_ip_adapter(sd: Path, out: Path, seed: int, encoder_cfg: dict = TINY_IMAGE_ENCODER,
                     name: str = 'ip-adapter_tiny.safetensors') -> None:
    """An IP-Adapter in the h94/IP-Adapter layout: ``image_proj.*`` (4 image tokens) and
    ``ip_adapter.{1,3,...}.to_{k,v}_ip.weight`` per cross-attention layer, in diffusers' processor order,
    plus its ``CLIPVisionModelWithProjection`` in ``image_encoder/``."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**encoder_cfg))
    encoder.save_pretrained(str(out / 'image_encoder'))
    unet = UNet2DConditionModel.from_pretrained(str(sd), subfolder='unet')
    cross, channels = unet.config.cross_attention_dim, unet.config.block_out_channels
    dim = encoder_cfg['projection_dim']
    tensors = {'image_proj.proj.weight': torch.randn(4 * cross, dim) * dim ** -0.5,
               'image_proj.proj.bias': torch.zeros(4 * cross),
               'image_proj.norm.weight': torch.ones(cross), 'image_proj.norm.bias': torch.zeros(cross)}
    key = 1
    for processor in unet.attn_processors:  # diffusers numbers the cross-attention layers 1, 3, 5, ...
        if processor.endswith('attn1.processor'):
            continue
        block = processor.split('.')
        hidden = (channels[-1] if block[0] == 'mid_block' else
                  list(reversed(channels))[int(block[1])] if block[0] == 'up_blocks' else channels[int(block[1])])
        for kv in ('to_k_ip', 'to_v_ip'):
            tensors[f'ip_adapter.{key}.{kv}.weight'] = torch.randn(hidden, cross) * (0.2 if cross < 100 else 0.02)
        key += 2
    save_file(tensors, str(out / name))


def _save_sd(out: Path) -> None:
    _save_pipeline(out / 'sd', TINY_UNET, TINY_TEXT, seed=0)
    _save_controlnet(out / 'sd', out / 'controlnet-canny', seed=1)
    (out / 'lora').mkdir(exist_ok=True)
    _save_lora_diffusers(out / 'sd', out / 'lora' / 'a.safetensors', seed=2)
    _save_lora_kohya(out / 'sd', out / 'lora' / 'b.safetensors', seed=3)


#: SD2: linear projections in the transformers, wider text states, per-level head counts
_TINY_SD2_UNET = dict(TINY_UNET, cross_attention_dim=64, use_linear_projection=True, attention_head_dim=(2, 4, 8, 8))
_TINY_SD2_TEXT = dict(TINY_TEXT, hidden_size=64, intermediate_size=128)


def _save_sd2(out: Path) -> None:
    _save_pipeline(out / 'sd2', _TINY_SD2_UNET, _TINY_SD2_TEXT, seed=4, train_vae=False)
    # SD2.1-768: the same shapes, a v-prediction scheduler (what differs is the scheduler's config)
    _save_pipeline(out / 'sd2v', _TINY_SD2_UNET, _TINY_SD2_TEXT, seed=9, train_vae=False,
                   prediction_type='v_prediction')


def make_tiny_sd(out: str | os.PathLike, sd2: bool = True, sdxl: bool = True, overwrite: bool = False) -> Path:
    """Write the tiny assets under ``out`` and return ``out``; each family (``sd``, ``sd2`` with
    ``sd2v``, ``sdxl``) is skipped when already written, unless ``overwrite``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = out / '.complete'
    written = json.loads(done.read_text() or '{}') if done.exists() and not overwrite else {}
    written.setdefault('sd', done.exists() and not overwrite)  # folders from before the per-family record
    parts = (('sd', True, _save_sd), ('ip-adapter', True, lambda o: _save_ip_adapter(o / 'sd', o / 'ip-adapter', 10)),
             ('sd2', sd2, _save_sd2), ('sdxl', sdxl, make_tiny_sdxl))
    for family, wanted, save in parts:
        if wanted and not (written.get(family) and (family != 'sd2' or (out / 'sd2v').is_dir())):
            save(out)
            written[family] = True
            done.write_text(json.dumps(written))
    return out


#: Stable Diffusion 1.5's real configurations (weights random: real ones are not reachable here)
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280))
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4,
                layers_per_block=2, sample_size=512)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act='quick_gelu', projection_dim=768)


def _made_once(out: str | os.PathLike, write) -> Path:
    """``write(out)`` unless ``out`` is complete already (large assets are made once)."""
    out = Path(out)
    if not (out / '.complete').exists():
        out.mkdir(parents=True, exist_ok=True)
        write(out)
        (out / '.complete').write_text('{}')
    return out


def make_sd15_shaped(out: str | os.PathLike) -> Path:
    """SD1.5-, sd-controlnet-canny- and paper-LoCon-shaped random weights (for benchmarks): ~6 GB on disk."""
    return _made_once(out, _write_sd15_shaped)


def _write_sd15_shaped(out: Path) -> None:
    _save_pipeline(out / 'sd', SD15_UNET, SD15_TEXT, seed=0, vae_cfg=SD15_VAE, calibrate_vae=False, train_vae=False)
    _save_controlnet(out / 'sd', out / 'controlnet-canny', seed=1, cond_channels=(16, 32, 96, 256))
    (out / 'lora').mkdir(exist_ok=True)
    # the paper's LoCon adapters: rank 64, alpha 32, conv dim 32
    for i, name in enumerate(('a', 'b')):
        _save_lora_kohya(out / 'sd', out / 'lora' / f'{name}.safetensors', seed=2 + i, rank=64, alpha=32.0,
                         conv_rank=32, up_scale=0.02)


def make_sd15_ip_adapter(out: str | os.PathLike) -> Path:
    """h94's ip-adapter_sd15-shaped random weights with a ViT-H/14 image encoder, in ``out/ip-adapter``
    (~2.5 GB): the IP-Adapter branch of the benchmark."""
    out = Path(out)
    if not (out / 'ip-adapter' / 'ip-adapter_sd15.safetensors').exists():
        _save_ip_adapter(out / 'sd', out / 'ip-adapter', seed=10, encoder_cfg=VIT_H_IMAGE_ENCODER,
                         name='ip-adapter_sd15.safetensors')
    return out


#: SDXL base 1.0's real configurations (weights random)
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'),
                 up_block_types=('CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 addition_embed_type='text_time', addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816, cross_attention_dim=2048)
SDXL_TEXT_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   max_position_embeddings=77, hidden_act='gelu', projection_dim=1280)


def make_sdxl_shaped(out: str | os.PathLike) -> Path:
    """SDXL-base- and controlnet-canny-sdxl-shaped random weights (for benchmarks): ~19 GB on disk."""
    return _made_once(out, _write_sdxl_shaped)


def _write_sdxl_shaped(out: Path) -> None:
    _save_pipeline(out / 'sd', SDXL_UNET, SD15_TEXT, seed=0, text_cfg_2=SDXL_TEXT_2,
                   vae_cfg=dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
                   calibrate_vae=False, train_vae=False)
    _save_controlnet(out / 'sd', out / 'controlnet-canny', seed=1, cond_channels=(16, 32, 96, 256))


def make_tiny_captioner(out: str | os.PathLike) -> Path:
    """A tiny random BLIP captioner (model + processor) in the transformers layout."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor
    out = Path(out)
    if (out / 'config.json').exists():
        return out
    words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '[DEC]', 'a', 'photo', 'of', 'the', 'street', 'room',
             'tree', 'car', 'sky', 'road', 'person', 'wall', 'with', 'and'] + list('bcdefghijklmnopqrstuvwxyz')
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tokenizer = BertTokenizer(vocab=vocab)
    tokenizer.add_special_tokens({'bos_token': '[DEC]'})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={'height': 32, 'width': 32}), tokenizer=tokenizer)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                bos_token_id=vocab['[DEC]'], pad_token_id=0, sep_token_id=vocab['[SEP]'], eos_token_id=vocab['[SEP]'],
                encoder_hidden_size=32)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out
