"""tools/benchmark.py's diffusion-transformer presets and their reference-style extractor.

Presets (asset layout of :mod:`mmseg_gate.testing.tiny_dit`, which the real-size makers share):

* ``sd35m``: SD3.5-medium-shaped random weights (:func:`~mmseg_gate.testing.dit_shaped.make_sd35m_shaped`) with
  ``--dit-blocks`` of its 24 blocks (default 4: three reference pipeline copies of the full 24-block model
  are 3 x 10 GB in fp32 and do not fit 24 GiB, and on 2 CPU cores every block costs ~4 s per branch at 512);
  branches: prompt; prompt + LoRA a + canny ControlNet; prompt + LoRA b + canny ControlNet (the issue's).
* ``pixart``: PixArt-Sigma-XL-2-512-MS-shaped random weights with ``--dit-blocks`` of its 28 blocks (default
  12); branches: three prompts. The issue's LoRA branches are not possible: diffusers has no PixArt LoRA
  loader and ``PixArtTransformer2DModel`` no peft adapter mixin, so the backbone refuses LoRA on PixArt
  (and diffusers has no PixArt ControlNet). Three differently prompted branches keep three distinct
  transformer passes per image in both modes, as the issue's LoRA branches would.
* ``tiny-sd3`` / ``tiny-pixart``: the same machinery on the tiny DiT test assets (tests).

Taps: a DiT has one stride (16), so GATE's three levels are three blocks at 1/4, 1/2 and 3/4 of the depth
(blocks 5, 11, 17 of SD3.5-medium's 24; 0, 1, 2 of 4; 2, 5, 8 of 12), each a level of its own, all at 1/16.
Ours stops after the last tap; the reference runs the whole transformer. With a ControlNet a tap is what the
next block receives (the block's image tokens plus its residual), as the backbone documents.

The reference-style extractor does per branch what a diffusers user following the authors' code would:
its own pipeline copy (LoRA fused into its own transformer), its own prompt encoding, VAE encode, Canny
with OpenCV, control-image VAE encode and ControlNet call (its own ControlNet copy), and the full
transformer forward with hooks. Same noise (one seeded pattern), posterior mode: features equal ours.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

#: the PixArt preset's three branch prompts (the first is the authors')
PIXART_PROMPTS = ('a highly realistic photo of the real world. high quality.',
                  'a photo of a room, indoor scene',
                  'a photo of a street, outdoor scene')
DIT_PRESETS = {'sd35m': 'sd3', 'pixart': 'pixart', 'tiny-sd3': 'sd3', 'tiny-pixart': 'pixart'}
DEFAULT_BLOCKS = {'sd35m': 4, 'pixart': 12}


def pipeline_folder(assets: Path, preset: str) -> Path:
    return assets / ('sd3' if DIT_PRESETS[preset] == 'sd3' else 'pixart-sigma')


def num_blocks(assets: Path, preset: str) -> int:
    cfg = json.loads((pipeline_folder(assets, preset) / 'transformer' / 'config.json').read_text())
    return int(cfg['num_layers'])


def dit_taps(depth: int) -> tuple[str, ...]:
    """Blocks ending the first, second and third quarter of the depth (duplicates dropped)."""
    blocks = sorted({max(0, round(depth * k / 4) - 1) for k in (1, 2, 3)})
    return tuple(f'transformer_blocks.{i}' for i in blocks)


def dit_branches(assets: Path, preset: str, prompt: str) -> list[dict]:
    if DIT_PRESETS[preset] == 'pixart':
        return [dict(name=f'prompt{i}', prompt=p) for i, p in enumerate(PIXART_PROMPTS)]
    canny = dict(path=str(assets / 'sd3-controlnet'), condition='canny', scale=1.0)
    return [dict(name='prompt'),
            *(dict(name=f'lora_{k}_canny', loras=[dict(path=str(assets / 'sd3-lora' / f'{k}.safetensors'))],
                   controlnets=[canny]) for k in 'ab')]


def describe(assets: Path, preset: str) -> str:
    depth = num_blocks(assets, preset)
    if preset == 'sd35m':
        return f'SD3.5-medium-shaped with {depth} of 24 blocks (random weights), taps {list(dit_taps(depth))}'
    if preset == 'pixart':
        return f'PixArt-Sigma-XL-shaped with {depth} of 28 blocks (random weights), taps {list(dit_taps(depth))}'
    return f'{preset}: tiny test assets, {depth} blocks, taps {list(dit_taps(depth))}'


def make_assets(preset: str, assets: str, blocks: int | None) -> None:
    if preset == 'sd35m':
        from mmseg_gate.testing.dit_shaped import make_sd35m_shaped
        make_sd35m_shaped(assets, blocks or DEFAULT_BLOCKS[preset])
    elif preset == 'pixart':
        from mmseg_gate.testing.dit_shaped import make_pixart_sigma_shaped
        make_pixart_sigma_shaped(assets, blocks or DEFAULT_BLOCKS[preset])
    else:
        from mmseg_gate.testing.tiny_dit import make_tiny_dit
        make_tiny_dit(assets)


def default_assets(preset: str, blocks: int | None) -> str:
    if preset in ('tiny-sd3', 'tiny-pixart'):
        return 'data/tiny_dit'
    name = 'sd35m_random' if preset == 'sd35m' else 'pixart_sigma_random'
    return f'data/{name}_b{blocks or DEFAULT_BLOCKS[preset]}'


def _canny(img: torch.Tensor, device, dtype) -> torch.Tensor:
    """As tools/benchmark.py's SD1.5 reference: de-normalise, to the CPU, OpenCV per image, back; [0, 1]."""
    import cv2
    u8 = ((img.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    edges = np.stack([np.stack([cv2.Canny(np.ascontiguousarray(im), 100, 200)] * 3) for im in u8])
    return torch.from_numpy(edges).to(device, dtype) / 255


class DiTReferenceExtractor:
    """The reference-style per-branch work for SD3 / PixArt (see the module docstring)."""

    def __init__(self, assets: Path, preset: str, branches: list[dict], prompt: str, dtype: torch.dtype, device: str,
                 timestep: int, sample_posterior: bool) -> None:
        self.family, self.device, self.timestep, self.sample = DIT_PRESETS[preset], device, timestep, sample_posterior
        self.taps = dit_taps(num_blocks(assets, preset))
        self.stage_timer = None  # as GATEDiffusionBackbone.stage_timer
        self.branches = []
        folder = pipeline_folder(assets, preset)
        for b in branches:
            if self.family == 'sd3':
                from diffusers import SD3ControlNetModel, StableDiffusion3Pipeline
                pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), torch_dtype=dtype)
                nets = [SD3ControlNetModel.from_pretrained(c['path'], torch_dtype=dtype).to(device)
                        for c in b.get('controlnets', ())]
            else:
                from diffusers import PixArtSigmaPipeline
                pipe, nets = PixArtSigmaPipeline.from_pretrained(str(folder), torch_dtype=dtype), []
            for lora in b.get('loras', ()):
                pipe.load_lora_weights(lora['path'], adapter_name='merged')
                pipe.fuse_lora(lora_scale=lora.get('scale', 1.0))
                pipe.unload_lora_weights()  # merged: a plain transformer copy per branch
            pipe.to(device)
            scales = [c.get('scale', 1.0) for c in b.get('controlnets', ())]
            self.branches.append((pipe, nets, b.get('prompt', prompt), scales))

    def models(self):
        for pipe, nets, _, _ in self.branches:
            encoders = [getattr(pipe, a) for a in ('text_encoder', 'text_encoder_2', 'text_encoder_3')
                        if getattr(pipe, a, None) is not None]
            yield from (pipe.transformer, pipe.vae, *encoders, *nets)

    def _noisy(self, pipe, latents: torch.Tensor):
        noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(0))
        noise = noise.to(latents).expand_as(latents)
        b = latents.shape[0]
        if self.family == 'sd3':
            # the authors' img2img at strength t / 1000: first step of the 28-step schedule
            from diffusers import StableDiffusion3Img2ImgPipeline
            img2img = StableDiffusion3Img2ImgPipeline(**pipe.components)
            img2img.scheduler.set_timesteps(28)
            t = img2img.get_timesteps(28, self.timestep / 1000, self.device)[0][:1]
            return img2img.scheduler.scale_noise(latents, t, noise), t.expand(b)
        from diffusers import DDPMScheduler
        t = torch.full((b,), self.timestep, dtype=torch.long, device=self.device)
        return DDPMScheduler.from_config(pipe.scheduler.config).add_noise(latents, noise, t), t

    @torch.no_grad()
    def extract(self, img: torch.Tensor) -> list[list[torch.Tensor]]:
        from mmseg_gate.utils.timing import no_timer
        timed = self.stage_timer or no_timer
        b, _, h, w = img.shape
        per_level = [[] for _ in self.taps]
        for pipe, nets, prompt, scales in self.branches:
            dtype, vae = pipe.transformer.dtype, pipe.vae
            with timed('text'):
                if self.family == 'sd3':
                    emb, _, pooled, _ = pipe.encode_prompt(prompt, None, None, device=self.device,
                                                           num_images_per_prompt=b, do_classifier_free_guidance=False)
                    cond = dict(encoder_hidden_states=emb, pooled_projections=pooled)
                else:
                    emb, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False,
                                                         num_images_per_prompt=b, device=self.device)
                    added = dict(resolution=None, aspect_ratio=None)
                    if pipe.transformer.config.sample_size == 128:  # the pipeline's rule
                        added = dict(resolution=torch.tensor([[h, w]] * b, dtype=emb.dtype, device=self.device),
                                     aspect_ratio=torch.tensor([[h / w]] * b, dtype=emb.dtype, device=self.device))
                    cond = dict(encoder_hidden_states=emb, encoder_attention_mask=mask, added_cond_kwargs=added)
            with timed('vae'):
                dist = vae.encode(img.to(self.device, dtype)).latent_dist
                z = dist.sample() if self.sample else dist.mode()
                latents = (z - (vae.config.shift_factor or 0)) * vae.config.scaling_factor
                noisy, t = self._noisy(pipe, latents)
            residuals = None
            for net, scale in zip(nets, scales):
                with timed('conditions'):
                    control = _canny(img, self.device, dtype)
                with timed('controlnet'):
                    # StableDiffusion3ControlNetPipeline: [0, 1] -> [-1, 1], VAE, InstantX's kind without shift
                    z = vae.encode(control * 2 - 1).latent_dist.mode()
                    shift = 0.0 if net.config.force_zeros_for_pooled_projection else vae.config.shift_factor
                    control = (z - shift) * vae.config.scaling_factor
                    pooled = cond['pooled_projections']
                    residuals = net(noisy, controlnet_cond=control, conditioning_scale=scale, timestep=t,
                                    encoder_hidden_states=cond['encoder_hidden_states'],
                                    pooled_projections=torch.zeros_like(pooled)
                                    if net.config.force_zeros_for_pooled_projection else pooled,
                                    return_dict=False)[0]
            out, hooks = {}, []
            blocks = pipe.transformer.transformer_blocks
            for i, name in enumerate(self.taps):
                k = int(name.rsplit('.', 1)[1])
                if self.family == 'sd3':  # what the next block receives (a ControlNet residual added)
                    hooks.append(blocks[k + 1].register_forward_pre_hook(
                        lambda m, a, kw, i=i: out.__setitem__(i, kw['hidden_states']), with_kwargs=True))
                else:
                    hooks.append(blocks[k].register_forward_hook(lambda m, a, o, i=i: out.__setitem__(i, o)))
            with timed('unet'):  # the full transformer
                kwargs = dict(block_controlnet_hidden_states=residuals) if residuals is not None else {}
                pipe.transformer(hidden_states=noisy, timestep=t, **cond, **kwargs)
            for hook in hooks:
                hook.remove()
            for level in range(len(self.taps)):
                tokens = out[level].float()
                per_level[level].append(tokens.transpose(1, 2).reshape(b, -1, h // 16, w // 16))
        return per_level


__all__ = ['DIT_PRESETS', 'DiTReferenceExtractor', 'dit_taps', 'dit_branches', 'pipeline_folder', 'describe',
           'make_assets', 'default_assets', 'num_blocks']
