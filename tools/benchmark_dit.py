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
* ``flux``: FLUX.1-dev-shaped random weights (:func:`~mmseg_gate.testing.dit_shaped.make_flux_shaped`) with
  ``--dit-blocks D,S``: D of its 19 double-stream and S of its 38 single-stream blocks (default ``1,2``: a
  double block is 340 M parameters, a single one 142 M, so the 1 + 2 transformer is 0.69 B, 2.7 GB in fp32; the
  reference's three pipeline copies and two 1 + 1 ControlNet copies (0.55 B, 2.2 GB each) are 3.4 B parameters,
  12.8 GiB in fp32 with the VAEs and stand-in text encoders: its peak at 512 is 13.3 GiB of 24); InstantX-kind
  canny ControlNet, rank-64 LoRAs; branches as sd35m.
* ``tiny-sd3`` / ``tiny-pixart`` / ``tiny-flux``: the same machinery on the tiny DiT test assets (tests).

Taps: a DiT has one stride (16), so GATE's three levels are three blocks at 1/4, 1/2 and 3/4 of the depth
(blocks 5, 11, 17 of SD3.5-medium's 24; 0, 1, 2 of 4; 2, 5, 8 of 12), each a level of its own, all at 1/16.
FLUX counts its double- then its single-stream blocks (one depth: 1 + 2 gives transformer_blocks.0 and
single_transformer_blocks.0, duplicates dropped; the tiny 2 + 3 transformer_blocks.0, transformer_blocks.1 and
single_transformer_blocks.1). Ours stops after the last tap; the reference runs the whole transformer. With a
ControlNet a tap is what the next block receives (the block's image tokens plus its residual), as the backbone
documents (after FLUX's last double block: what single block 0 receives).

The reference-style extractor does per branch what a diffusers user following the authors' code would:
its own pipeline copy (LoRA fused into its own transformer), its own prompt encoding, VAE encode, Canny
with OpenCV, control-image VAE encode and ControlNet call (its own ControlNet copy), the authors' noise
(their img2img schedule at strength t / 1000, first step; FLUX: FluxImg2ImgPipeline's sigmas linspace(1, 1/28,
28) shifted by the image's mu; latents packed 2x2, guidance 1.0), and the full transformer forward with hooks.
Same noise (one seeded pattern), posterior mode: features equal ours.
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
DIT_PRESETS = {'sd35m': 'sd3', 'pixart': 'pixart', 'flux': 'flux',
               'tiny-sd3': 'sd3', 'tiny-pixart': 'pixart', 'tiny-flux': 'flux'}
#: --dit-blocks defaults (flux: double-stream, single-stream)
DEFAULT_BLOCKS = {'sd35m': 4, 'pixart': 12, 'flux': (1, 2)}
#: pipeline folders per family (ControlNet and LoRAs: ``{family}-controlnet``, ``{family}-lora``)
FOLDERS = {'sd3': 'sd3', 'pixart': 'pixart-sigma', 'flux': 'flux'}
#: the reference's pipeline, ControlNet and img2img (the authors' noise) classes, diffusers' names
CLASSES = {'sd3': ('StableDiffusion3Pipeline', 'SD3ControlNetModel', 'StableDiffusion3Img2ImgPipeline'),
           'pixart': ('PixArtSigmaPipeline', None, None),
           'flux': ('FluxPipeline', 'FluxControlNetModel', 'FluxImg2ImgPipeline')}


def parse_blocks(preset: str, blocks) -> int | tuple[int, int]:
    """``--dit-blocks``: N blocks (sd35m, pixart) or ``D,S`` double- and single-stream blocks (flux); None: default."""
    if blocks is None:
        return DEFAULT_BLOCKS[preset]
    parts = [int(x) for x in str(blocks).split(',')]
    if preset == 'flux':
        if len(parts) != 2 or parts[0] < 1 or parts[1] < 0:
            raise ValueError(f'--dit-blocks {blocks}: flux takes D,S (double-stream blocks >= 1 of 19, single-stream '
                             'of 38), e.g. 1,2')
        return tuple(parts)
    if len(parts) != 1 or parts[0] < 1:
        raise ValueError(f'--dit-blocks {blocks}: {preset} takes one block count, e.g. 4')
    return parts[0]


def pipeline_folder(assets: Path, preset: str) -> Path:
    return assets / FOLDERS[DIT_PRESETS[preset]]


def block_names(assets: Path, preset: str) -> list[str]:
    """The transformer's blocks in call order (FLUX: double-stream, then single-stream)."""
    cfg = json.loads((pipeline_folder(assets, preset) / 'transformer' / 'config.json').read_text())
    return ([f'transformer_blocks.{i}' for i in range(cfg['num_layers'])]
            + [f'single_transformer_blocks.{i}' for i in range(cfg.get('num_single_layers', 0))])


def num_blocks(assets: Path, preset: str) -> int:
    return len(block_names(assets, preset))


def dit_taps(blocks: int | list[str]) -> tuple[str, ...]:
    """Blocks ending the first, second and third quarter of the depth (duplicates dropped); ``blocks``: the
    depth (``transformer_blocks.N``) or the block names in call order."""
    names = [f'transformer_blocks.{i}' for i in range(blocks)] if isinstance(blocks, int) else list(blocks)
    return tuple(names[i] for i in sorted({max(0, round(len(names) * k / 4) - 1) for k in (1, 2, 3)}))


def preset_taps(assets: Path, preset: str) -> tuple[str, ...]:
    return dit_taps(block_names(assets, preset))


def dit_branches(assets: Path, preset: str, prompt: str) -> list[dict]:
    family = DIT_PRESETS[preset]
    if family == 'pixart':
        return [dict(name=f'prompt{i}', prompt=p) for i, p in enumerate(PIXART_PROMPTS)]
    canny = dict(path=str(assets / f'{family}-controlnet'), condition='canny', scale=1.0)
    return [dict(name='prompt'),
            *(dict(name=f'lora_{k}_canny', loras=[dict(path=str(assets / f'{family}-lora' / f'{k}.safetensors'))],
                   controlnets=[canny]) for k in 'ab')]


def describe(assets: Path, preset: str) -> str:
    names = block_names(assets, preset)
    taps = f'taps {list(dit_taps(names))}'
    if preset == 'flux':
        doubles = sum(n.startswith('transformer_blocks.') for n in names)
        return (f'FLUX.1-dev-shaped with {doubles} of 19 double- and {len(names) - doubles} of 38 single-stream '
                f'blocks (random weights), {taps}')
    if preset == 'sd35m':
        return f'SD3.5-medium-shaped with {len(names)} of 24 blocks (random weights), {taps}'
    if preset == 'pixart':
        return f'PixArt-Sigma-XL-shaped with {len(names)} of 28 blocks (random weights), {taps}'
    return f'{preset}: tiny test assets, {len(names)} blocks, {taps}'


def make_assets(preset: str, assets: str, blocks=None) -> None:
    if preset.startswith('tiny-'):
        from mmseg_gate.testing.tiny_dit import make_tiny_dit
        make_tiny_dit(assets)  # SD3, PixArt and FLUX assets
        return
    from mmseg_gate.testing import dit_shaped
    makers = dict(sd35m=dit_shaped.make_sd35m_shaped, pixart=dit_shaped.make_pixart_sigma_shaped,
                  flux=dit_shaped.make_flux_shaped)
    n = parse_blocks(preset, blocks)
    makers[preset](assets, *(n if isinstance(n, tuple) else (n,)))


def default_assets(preset: str, blocks=None) -> str:
    if preset.startswith('tiny-'):
        return 'data/tiny_dit'
    n = parse_blocks(preset, blocks)
    if preset == 'flux':
        return f'data/flux1dev_random_d{n[0]}s{n[1]}'
    return f'data/{"sd35m_random" if preset == "sd35m" else "pixart_sigma_random"}_b{n}'


def _canny(img: torch.Tensor, device, dtype) -> torch.Tensor:
    """As tools/benchmark.py's SD1.5 reference: de-normalise, to the CPU, OpenCV per image, back; [0, 1]."""
    import cv2
    u8 = ((img.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    edges = np.stack([np.stack([cv2.Canny(np.ascontiguousarray(im), 100, 200)] * 3) for im in u8])
    return torch.from_numpy(edges).to(device, dtype) / 255


class DiTReferenceExtractor:
    """The reference-style per-branch work for SD3 / PixArt / FLUX (see the module docstring)."""

    def __init__(self, assets: Path, preset: str, branches: list[dict], prompt: str, dtype: torch.dtype, device: str,
                 timestep: int, sample_posterior: bool) -> None:
        import diffusers
        self.family, self.device, self.timestep, self.sample = DIT_PRESETS[preset], device, timestep, sample_posterior
        self.blocks = block_names(assets, preset)
        self.taps = dit_taps(self.blocks)
        self.stage_timer = None  # as GATEDiffusionBackbone.stage_timer
        self.branches = []
        pipeline_class, controlnet_class, _ = (getattr(diffusers, c) if c else None for c in CLASSES[self.family])
        for b in branches:
            pipe = pipeline_class.from_pretrained(str(pipeline_folder(assets, preset)), torch_dtype=dtype)
            nets = [controlnet_class.from_pretrained(c['path'], torch_dtype=dtype).to(device)
                    for c in b.get('controlnets', ())]
            for lora in b.get('loras', ()):
                pipe.load_lora_weights(lora['path'], adapter_name='merged')
                # into every component the file adapts (FLUX: transformer and CLIP)
                pipe.fuse_lora(components=list(pipe._lora_loadable_modules), lora_scale=lora.get('scale', 1.0))
                pipe.unload_lora_weights()  # merged: a plain transformer copy per branch
            pipe.to(device)
            scales = [c.get('scale', 1.0) for c in b.get('controlnets', ())]
            self.branches.append((pipe, nets, b.get('prompt', prompt), scales))

    def models(self):
        for pipe, nets, _, _ in self.branches:
            encoders = [getattr(pipe, a) for a in ('text_encoder', 'text_encoder_2', 'text_encoder_3')
                        if getattr(pipe, a, None) is not None]
            yield from (pipe.transformer, pipe.vae, *encoders, *nets)

    def _condition(self, pipe, prompt: str, b: int, h: int, w: int) -> dict:
        """The transformer's text (and guidance) keyword arguments, as the family's pipeline makes them."""
        if self.family == 'sd3':
            emb, _, pooled, _ = pipe.encode_prompt(prompt, None, None, device=self.device, num_images_per_prompt=b,
                                                   do_classifier_free_guidance=False)
            return dict(encoder_hidden_states=emb, pooled_projections=pooled)
        if self.family == 'flux':
            emb, pooled, txt_ids = pipe.encode_prompt(prompt, None, device=self.device, num_images_per_prompt=b)
            cond = dict(encoder_hidden_states=emb, pooled_projections=pooled, txt_ids=txt_ids)
            if pipe.transformer.config.guidance_embeds:  # the authors' guidance_scale=1
                cond['guidance'] = torch.full((b,), 1.0, device=self.device)
            return cond
        emb, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, num_images_per_prompt=b,
                                             device=self.device)
        added = dict(resolution=None, aspect_ratio=None)
        if pipe.transformer.config.sample_size == 128:  # the pipeline's rule
            added = dict(resolution=torch.tensor([[h, w]] * b, dtype=emb.dtype, device=self.device),
                         aspect_ratio=torch.tensor([[h / w]] * b, dtype=emb.dtype, device=self.device))
        return dict(encoder_hidden_states=emb, encoder_attention_mask=mask, added_cond_kwargs=added)

    def _latents(self, pipe, x: torch.Tensor, sample: bool = False, shift: float | None = None) -> torch.Tensor:
        """VAE-encoded ``(z - shift) * scale`` (``shift``: the VAE's unless given)."""
        vae = pipe.vae
        dist = vae.encode(x).latent_dist
        z = dist.sample() if sample else dist.mode()
        return (z - ((vae.config.shift_factor or 0) if shift is None else shift)) * vae.config.scaling_factor

    def _noisy(self, pipe, latents: torch.Tensor):
        """The noisy latents at the authors' noise level (the transformer's input: FLUX's packed), the timestep
        the transformer is given and the input's extra keyword arguments (FLUX: ``img_ids``)."""
        noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(0))
        noise = noise.to(latents).expand_as(latents)
        b, c, lh, lw = latents.shape
        if self.family == 'pixart':
            from diffusers import DDPMScheduler
            t = torch.full((b,), self.timestep, dtype=torch.long, device=self.device)
            return DDPMScheduler.from_config(pipe.scheduler.config).add_noise(latents, noise, t), t, {}
        # the authors' img2img at strength t / 1000: first step of the 28-step schedule
        import diffusers
        img2img = getattr(diffusers, CLASSES[self.family][2])(**pipe.components)
        if self.family == 'sd3':
            img2img.scheduler.set_timesteps(28)
        else:  # FluxImg2ImgPipeline: sigmas linspace(1, 1/28, 28), shifted by the image's token count
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
            cfg = img2img.scheduler.config
            mu = calculate_shift((lh // 2) * (lw // 2), cfg.get('base_image_seq_len', 256),
                                 cfg.get('max_image_seq_len', 4096), cfg.get('base_shift', 0.5),
                                 cfg.get('max_shift', 1.15))
            retrieve_timesteps(img2img.scheduler, 28, self.device, sigmas=np.linspace(1.0, 1 / 28, 28), mu=mu)
        t = img2img.get_timesteps(28, self.timestep / 1000, self.device)[0][:1]
        noisy = img2img.scheduler.scale_noise(latents, t, noise)
        if self.family == 'sd3':
            return noisy, t.expand(b), {}
        # FluxPipeline: packed tokens with their (row, column) ids, timestep / 1000
        ids = pipe._prepare_latent_image_ids(b, lh // 2, lw // 2, self.device, noisy.dtype)
        return pipe._pack_latents(noisy, b, c, lh, lw), (t / 1000).expand(b), dict(img_ids=ids)

    def _controlnet(self, pipe, net, control: torch.Tensor, scale: float, noisy: torch.Tensor, t: torch.Tensor,
                    cond: dict) -> dict:
        """The control image ([0, 1]) through the VAE as the ControlNet pipeline does ([-1, 1], posterior mode),
        the ControlNet call and the transformer's residual keyword arguments."""
        if self.family == 'sd3':  # StableDiffusion3ControlNetPipeline, InstantX's kind without shift
            zeros = net.config.force_zeros_for_pooled_projection
            control = self._latents(pipe, control * 2 - 1, shift=0.0 if zeros else None)
            pooled = cond['pooled_projections']
            residuals = net(noisy, controlnet_cond=control, conditioning_scale=scale, timestep=t,
                            encoder_hidden_states=cond['encoder_hidden_states'],
                            pooled_projections=torch.zeros_like(pooled) if zeros else pooled, return_dict=False)[0]
            return dict(block_controlnet_hidden_states=residuals)
        # FluxControlNetPipeline, InstantX's kind: packed control latents; guidance where the ControlNet has it
        z = self._latents(pipe, control * 2 - 1)
        kwargs = {k: v for k, v in cond.items() if k != 'guidance' or net.config.guidance_embeds}
        doubles, singles = net(hidden_states=noisy, controlnet_cond=pipe._pack_latents(z, *z.shape),
                               conditioning_scale=scale, timestep=t, **kwargs, return_dict=False)
        return dict(controlnet_block_samples=doubles, controlnet_single_block_samples=singles)

    @torch.no_grad()
    def extract(self, img: torch.Tensor) -> list[list[torch.Tensor]]:
        from mmseg_gate.utils.timing import no_timer
        timed = self.stage_timer or no_timer
        b, _, h, w = img.shape
        per_level = [[] for _ in self.taps]
        for pipe, nets, prompt, scales in self.branches:
            dtype = pipe.transformer.dtype
            with timed('text'):
                cond = self._condition(pipe, prompt, b, h, w)
            with timed('vae'):
                latents = self._latents(pipe, img.to(self.device, dtype), self.sample)
                noisy, t, extra = self._noisy(pipe, latents)
                cond.update(extra)
            residuals = {}
            for net, scale in zip(nets, scales):
                with timed('conditions'):
                    control = _canny(img, self.device, dtype)
                with timed('controlnet'):
                    residuals = self._controlnet(pipe, net, control, scale, noisy, t, cond)
            out, hooks = {}, []
            modules = dict(pipe.transformer.named_modules())
            for i, name in enumerate(self.taps):
                if self.family == 'pixart':  # the block's output (no ControlNet)
                    hooks.append(modules[name].register_forward_hook(lambda m, a, o, i=i: out.__setitem__(i, o)))
                else:  # what the next block receives (a ControlNet residual added; FLUX's image tokens)
                    after = modules[self.blocks[self.blocks.index(name) + 1]]
                    hooks.append(after.register_forward_pre_hook(
                        lambda m, a, kw, i=i: out.__setitem__(i, kw['hidden_states']), with_kwargs=True))
            with timed('unet'):  # the full transformer
                pipe.transformer(hidden_states=noisy, timestep=t, **cond, **residuals)
            for hook in hooks:
                hook.remove()
            for level in range(len(self.taps)):
                tokens = out[level].float()
                per_level[level].append(tokens.transpose(1, 2).reshape(b, -1, h // 16, w // 16))
        return per_level


__all__ = ['DIT_PRESETS', 'DiTReferenceExtractor', 'dit_taps', 'preset_taps', 'block_names', 'dit_branches',
           'pipeline_folder', 'describe', 'make_assets', 'default_assets', 'num_blocks', 'parse_blocks']
