"""GATEDiffusionBackbone: frozen Stable Diffusion features of several branches, amalgamated per level."""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import nn

from .amalgamation import Amalgamation
from .branch_batching import BASE_ADAPTER, lora_layers, mixed_adapter_batch, plan_branch_groups
from .branches import BranchSpec, adapter_name_for, load_lora_adapter, parse_branches
from .conditions import build_condition
from .inference_blocks import chunk_feed_forward
from .noise import NoisePolicy
from ..utils.files import file_sha256
from ..utils.memory import GLIBC_MAX_MMAP_THRESHOLD, release_free_heap_memory
from ..utils.timing import no_timer
from .stable_diffusion import (FrozenStableDiffusion, check_weights_location, find_modules,
                               from_pretrained_or_explain, resolve_dtype, run_until_taps)

#: outputs of the upsamplers of the first three up blocks (paper, Sec. 4): 1/32, 1/16, 1/8 for SD1.5
GATE_TAPS = ('up_blocks.0.upsamplers.0', 'up_blocks.1.upsamplers.0', 'up_blocks.2.upsamplers.0')


@MODELS.register_module()
class GATEDiffusionBackbone(BaseModule):
    """Stable Diffusion UNet features for segmentation, with GATE's content-shift suppression.

    Input: images normalised by the data preprocessor; by default ``mean=std=127.5`` so they are
    in [-1, 1] as SD expects (RGB: keep ``bgr_to_rgb=True``). Give the preprocessor's ``mean`` and
    ``std`` here if it uses others (e.g. ImageNet statistics): the backbone undoes them.

    Output: one feature map per tap, sorted high resolution first (1/8, 1/16, 1/32 for SD1.5's
    GATE taps) as every mmseg backbone; ``out_channels`` gives the head's ``in_channels``.

    Args:
        pretrained: local diffusers folder or hub id of a Stable Diffusion model.
        branches: list of dicts ``dict(name, prompt=None, loras=[dict(path, scale)],
            controlnets=[dict(path, condition='canny', scale=1.0, condition_cfg={})])``.
        prompt: default prompt of every branch without its own.
        timestep: the scheduler's training timestep t (0..999): the latents are noised to
            alpha_bar[t] and the UNet gets t. The authors' "t=50" went through PNDM's img2img
            timesteps (``steps_offset=1``) and landed on 51, which the GATE configs use.
        taps: UNet module names whose outputs are the features.
        dtype: 'fp32' | 'fp16' | 'bf16' for the frozen parts (fp32 on CPU).
        noise: the noise policy (:mod:`.noise`): ``'gate'`` (default, the authors' training: fresh
            posterior sample and noise per branch and step while training; seeded per branch in
            eval, so the same image gives the same features), ``'fixed'`` (one seeded pattern for
            all branches, train and eval, posterior mode) or ``'random'`` (fresh also in eval).
        noise_seed: seed of the deterministic draws.
        sample_posterior: sample the VAE posterior (``None``: as the noise policy says).
        unet_input_scale: resize every input by this factor before SD, keeping its aspect ratio
            (0.5: the paper's Cityscapes 1024 crops -> 512), then pad as usual; the SD input is
            resized bilinearly and the control images are made from an antialiased bicubic resize
            of the pixels (as the authors' PIL path). Features are brought back to the input's
            1/stride grid. ``None`` (default): no resize.
        mean, std: the data preprocessor's normalisation, undone here.
        amalgamation: kwargs of :class:`Amalgamation`, or ``None`` to return a single branch's raw
            features.
        keep_text_encoder: keep CLIP after build so :meth:`encode_prompts` can encode new prompts.
        batch_branches: run the branches' UNet passes (and the calls of a shared ControlNet) as one
            batch where their LoRA adapters allow it (peft mixed-adapter batches): faster, same
            features; the UNet activations of those branches are held together.
        compile: ``torch.compile`` the VAE encoder and the ControlNets (``True``, or a dict of
            ``torch.compile`` kwargs such as ``dict(mode='max-autotune')``). The UNet stays eager:
            its adapters switch and its forward stops early, which would recompile or break graphs.
            The first forward pays the compilation (about 30 s for SD1.5's VAE on a CPU).
        feed_forward_chunks: split the feed-forward of the UNet's transformer blocks with 1024 or
            more tokens (SD1.5: the 1/8 and 1/16 levels at 512x512) into this many pieces along the
            tokens: the batched branches' largest activation shrinks accordingly (same speed on CPU,
            features equal within 1e-5). 1 turns it off.
        release_cpu_memory: on CPU, hand freed memory back to the OS between stages (before the VAE,
            the ControlNets, the UNet and its middle block; glibc ``malloc_trim``): one stage's freed
            activations do not stay resident under the next (with ``feed_forward_chunks``: ~0.38 GB
            lower peak RSS for SD1.5 at 512x512 with 3 branches, at the same speed). Only in passes whose VAE activations exceed
            glibc's 32 MB mmap threshold (smaller ones reuse the free heap, and trims would only
            cost page faults). No effect on GPU or without glibc.
        hub_kwargs: extra ``from_pretrained`` kwargs (``revision``, ``local_files_only``, ...).
    """

    def __init__(self,
                 pretrained: str,
                 branches: Sequence[dict] = (dict(name='basic'),),
                 prompt: str = '',
                 timestep: int = 50,
                 taps: Sequence[str] = GATE_TAPS,
                 dtype: str = 'fp32',
                 noise: str = 'gate',
                 noise_seed: int = 0,
                 sample_posterior: bool | None = None,
                 unet_input_scale: float | None = None,
                 unet_input_size: Sequence[int] | None = None,
                 mean: Sequence[float] = (127.5, 127.5, 127.5),
                 std: Sequence[float] = (127.5, 127.5, 127.5),
                 amalgamation: dict | None = dict(),
                 keep_text_encoder: bool = False,
                 batch_branches: bool = True,
                 compile: bool | dict = False,
                 feed_forward_chunks: int = 4,
                 release_cpu_memory: bool = True,
                 hub_kwargs: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg)
        self.noise_policy = NoisePolicy(noise, noise_seed, sample_posterior)
        if unet_input_size is not None:
            raise ValueError(f'unet_input_size={unet_input_size} squashed non-square crops and is gone: use '
                             'unet_input_scale (e.g. 0.5 for 1024 crops -> 512), which keeps the aspect ratio')
        if unet_input_scale is not None and not unet_input_scale > 0:
            raise ValueError(f'unet_input_scale={unet_input_scale}: use a positive factor (or None for no resize)')
        if not taps:
            raise ValueError('taps is empty: name at least one UNet module, e.g. GATE_TAPS')
        if feed_forward_chunks < 1:  # before the weights load, not after
            raise ValueError(f'feed_forward_chunks={feed_forward_chunks}: use 1 (off) or more pieces')
        self.specs: list[BranchSpec] = parse_branches(branches, prompt)
        self.timestep = int(timestep)
        self.release_cpu_memory = release_cpu_memory
        self._trim_heap = False  # decided per forward pass by _heap_trims_pay
        self._active_adapters: tuple | None = None  # unknown until the first switch
        self.stage_timer = None  # a StageTimer to profile extract() (tools/benchmark.py)
        self._image_prompts: list | None = None
        self._prompt_cache: dict = {}
        self.unet_input_scale = float(unet_input_scale) if unet_input_scale else None
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

        sd = FrozenStableDiffusion(pretrained, resolve_dtype(dtype), **(hub_kwargs or {}))
        # Not a registered submodule: frozen weights stay out of parameters(), state_dict(), the
        # optimizer and DDP; _apply() below still moves them with the model.
        object.__setattr__(self, 'sd', sd)
        if not 0 <= self.timestep < sd.scheduler.config.num_train_timesteps:
            raise ValueError(f'timestep={timestep} is outside [0, {sd.scheduler.config.num_train_timesteps})')
        self.adapter_names: dict[str, str] = {}
        self.adapter_targets: dict[str, dict[str, bool]] = {}
        self.lora_sha256: dict[str, str] = {}
        self._load_adapters(sd, 'text_encoder')
        self._encode_prompts(sd)
        if not keep_text_encoder:
            sd.release_text_encoder()
        sd.load_denoiser()
        self._load_adapters(sd, 'unet')
        self._load_controlnets(sd, resolve_dtype(dtype), hub_kwargs or {})
        sd.requires_grad_(False).eval()  # again: peft adapters and ControlNets arrived after __init__
        if release_cpu_memory and getattr(sd.unet, 'mid_block', None) is not None:
            # the down blocks' freed activations go too
            sd.unet.mid_block.register_forward_pre_hook(lambda module, args: self._release_cpu_memory())
        chunk_feed_forward(sd.unet, int(feed_forward_chunks))
        if compile:
            sd.compile_static_parts(**(compile if isinstance(compile, dict) else {}))
        # per branch its UNet adapters as ((adapter name, scale), ...)
        self.unet_adapter_keys = [tuple(zip(*self._adapters(spec, 'unet'))) for spec in self.specs]
        self.batch_branches = batch_branches
        self.branch_groups = plan_branch_groups(self.unet_adapter_keys, batch_branches)
        self.taps = tuple(taps)
        self.tap_modules = find_modules(sd.unet, self.taps)
        self.tap_channels, self.tap_strides = self._probe_taps()
        self.level_order = sorted(range(len(self.taps)), key=lambda i: self.tap_strides[i])
        in_channels = [self.tap_channels[i] for i in self.level_order]
        self.strides = [self.tap_strides[i] for i in self.level_order]

        if amalgamation is None:
            if len(self.specs) > 1:
                raise ValueError(f'amalgamation=None needs exactly one branch, got {len(self.specs)}')
            self.amalgamation = None
            self.out_channels = in_channels
        else:
            self.amalgamation = Amalgamation(in_channels, len(self.specs), **amalgamation)
            self.out_channels = self.amalgamation.out_channels

    # ----------------------------------------------------------------- build helpers
    def _load_adapters(self, sd: FrozenStableDiffusion, target: str) -> None:
        """Every distinct LoRA file once, as a named adapter of ``target`` (if it has layers for it)."""
        for spec in self.specs:
            for lora in spec.loras:
                name = adapter_name_for(lora.path, self.adapter_names)
                targets = self.adapter_targets.setdefault(name, {})
                if target not in targets:  # the file is read once per target: the text-encoder pass
                    # runs before the UNet is loaded, and holding the parsed files in between costs memory
                    targets[target] = load_lora_adapter(getattr(sd, target), lora.path, name, target)
                    print_log(f'LoRA {lora.path} -> {target} adapter {name!r}: {targets[target]}', 'current')
                if lora.path not in self.lora_sha256:  # what was loaded, for the checkpoints' meta
                    self.lora_sha256[lora.path] = file_sha256(lora.path)
        if target == 'unet':
            self._lora_params = [p for n, p in sd.unet.named_parameters() if 'lora_' in n]
            self._lora_layers = lora_layers(sd.unet)

    def _adapters(self, spec: BranchSpec, target: str) -> tuple[list[str], list[float]]:
        names, scales = [], []
        for lora in spec.loras:
            name = self.adapter_names[lora.path]
            if self.adapter_targets[name][target]:
                names.append(name)
                scales.append(lora.scale)
        return names, scales

    def _text_embedding(self, prompt: str, names: list[str], scales: list[float]) -> torch.Tensor:
        """CLIP embedding of ``prompt`` with the text-encoder LoRA adapters ``names`` active."""
        from diffusers.utils.peft_utils import set_adapter_layers, set_weights_and_activate_adapters
        te = self.sd.text_encoder
        if names:
            set_adapter_layers(te, enabled=True)
            set_weights_and_activate_adapters(te, names, scales)
        elif any(t.get('text_encoder') for t in self.adapter_targets.values()):
            set_adapter_layers(te, enabled=False)
        return self.sd.encode_prompt(prompt).float()

    def _encode_prompts(self, sd: FrozenStableDiffusion) -> None:
        """One CLIP pass per distinct (prompt, text-encoder adapters); cached as non-persistent buffers."""
        keys: dict[tuple, int] = {}
        self.branch_prompt: list[int] = []
        for spec in self.specs:
            names, scales = self._adapters(spec, 'text_encoder')
            key = (spec.prompt, tuple(names), tuple(scales))
            if key not in keys:
                keys[key] = len(keys)
                self.register_buffer(f'prompt_embeds_{keys[key]}', self._text_embedding(spec.prompt, names, scales),
                                     persistent=False)
            self.branch_prompt.append(keys[key])

    def set_prompts(self, prompts: Sequence[str | None] | None) -> None:
        """Per-image prompts (e.g. captions) for the following forwards; ``None`` entries, or branches
        with a prompt of their own, keep the configured prompt. Needs ``keep_text_encoder=True``."""
        if prompts is not None and any(p is not None for p in prompts) and self.sd.text_encoder is None:
            raise RuntimeError('per-image prompts need the text encoder: build the backbone with '
                               'keep_text_encoder=True')
        self._image_prompts = list(prompts) if prompts is not None else None

    def _branch_embedding(self, spec: BranchSpec, prompt_index: int, batch: int) -> tuple[torch.Tensor, object]:
        """The branch's text embedding for this batch and a hashable key of what it encodes."""
        prompts = self._image_prompts
        fixed = self.prompt_embeds(prompt_index)
        if prompts is None or spec.own_prompt or all(p is None for p in prompts):
            return fixed.expand(batch, -1, -1), prompt_index
        if len(prompts) != batch:
            raise ValueError(f'{len(prompts)} per-image prompts for a batch of {batch}')
        names, scales = self._adapters(spec, 'text_encoder')
        embeds, keys = [], []
        for prompt in prompts:
            if prompt is None:
                embeds.append(fixed)
                keys.append(prompt_index)
                continue
            key = (prompt, tuple(names), tuple(scales))
            if key not in self._prompt_cache:
                if len(self._prompt_cache) >= 1024:  # bounded: captions of a whole dataset would not fit
                    self._prompt_cache.pop(next(iter(self._prompt_cache)))
                self._prompt_cache[key] = self._text_embedding(prompt, names, scales).to(fixed.device)
            embeds.append(self._prompt_cache[key])
            keys.append(key)
        return torch.cat(embeds), tuple(keys)

    def _load_controlnets(self, sd: FrozenStableDiffusion, dtype: torch.dtype, hub_kwargs: dict) -> None:
        from diffusers import ControlNetModel
        paths = list(dict.fromkeys(c.path for s in self.specs for c in s.controlnets))
        self.controlnet_index = {p: str(i) for i, p in enumerate(paths)}
        sd.controlnets = nn.ModuleDict()
        for path, key in self.controlnet_index.items():
            check_weights_location(path, 'ControlNet')
            net = from_pretrained_or_explain(ControlNetModel.from_pretrained, path, 'ControlNet', dtype=dtype,
                                             **hub_kwargs)
            if net.config.cross_attention_dim != sd.unet.config.cross_attention_dim:
                raise ValueError(f'ControlNet {path!r} is for cross_attention_dim={net.config.cross_attention_dim}, '
                                 f'the UNet has {sd.unet.config.cross_attention_dim}: use a ControlNet made for '
                                 'this base model')
            sd.controlnets[key] = net.requires_grad_(False).eval()

    @torch.no_grad()
    def _probe_taps(self) -> tuple[list[int], list[int]]:
        """One tiny UNet pass to learn each tap's channels and stride (relative to the image)."""
        size = self.sd.unet_scale_factor * 2
        latents = torch.zeros(1, self.sd.unet.config.in_channels, size, size, dtype=self.sd.dtype)
        self._set_unet_adapters(())
        outs = run_until_taps(self.sd.unet, self.tap_modules, latents, self.timestep,
                              encoder_hidden_states=self.prompt_embeds(0).to(self.sd.dtype), return_dict=False)
        for name, out in zip(self.taps, outs):
            if out.ndim != 4:
                raise ValueError(f'tap {name!r} gives a {out.ndim}-d tensor; taps must give [B, C, h, w] maps')
        return ([o.shape[1] for o in outs],
                [self.sd.vae_scale_factor * size // o.shape[-1] for o in outs])

    # ----------------------------------------------------------------- nn.Module plumbing
    def _apply(self, fn, recurse: bool = True):
        self.sd._apply(fn)  # device/dtype moves reach the hidden frozen stack too
        return super()._apply(fn, recurse)

    def frozen_provenance(self) -> dict:
        """What the frozen parts were built from (recorded in checkpoints by ``GATECheckHook``)."""
        return dict(pretrained=str(self.sd.pretrained), loras=dict(self.lora_sha256),
                    controlnets=sorted(self.controlnet_index), timestep=self.timestep, taps=list(self.taps),
                    dtype=str(self.sd.dtype).replace('torch.', ''))

    def frozen_modules(self) -> FrozenStableDiffusion:
        """The frozen SD stack (VAE, UNet with adapters, ControlNets)."""
        return self.sd

    def extra_repr(self) -> str:
        return (f'pretrained={self.sd.pretrained!r}, branches={[s.name for s in self.specs]}, taps={self.taps}, '
                f'timestep={self.timestep}, frozen dtype={self.sd.dtype}')

    def prompt_embeds(self, index: int) -> torch.Tensor:
        return getattr(self, f'prompt_embeds_{index}')

    # ----------------------------------------------------------------- forward
    def _set_unet_adapters(self, key: tuple) -> None:
        """Switch the shared UNet to the adapters ``key`` = ((name, scale), ...); no-op if already set."""
        if key == self._active_adapters or not self.adapter_names:
            self._active_adapters = key
            return
        unet = self.sd.unet
        if key:
            unet.enable_lora()
            unet.set_adapters([n for n, _ in key], weights=[s for _, s in key])
        else:
            unet.disable_lora()
        for p in self._lora_params:  # peft marks active adapters trainable; they are frozen here
            p.requires_grad_(False)
        self._active_adapters = key

    def _sd_size(self, h: int, w: int) -> tuple[int, int]:
        """The size SD sees of an ``h x w`` input, before padding."""
        if self.unet_input_scale is None:
            return h, w
        return max(1, round(h * self.unet_input_scale)), max(1, round(w * self.unet_input_scale))

    def _prepare(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input -> (SD input in [-1, 1], 0..255 pixels for the control images), resized by
        ``unet_input_scale`` if set and padded to a valid size."""
        if img.ndim != 4 or img.shape[1] != 3:
            raise ValueError(f'GATEDiffusionBackbone expects [B, 3, H, W] RGB images, got shape '
                             f'{tuple(img.shape)}; convert grey/RGBA inputs to 3 channels in the pipeline')
        pixels = img.float() * self.std + self.mean
        x = pixels / 127.5 - 1.0
        size = self._sd_size(*pixels.shape[-2:])
        if size != tuple(pixels.shape[-2:]):
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)  # the authors' SD input
            # their control images: PIL's (antialiased bicubic) resize of the uint8 image
            pixels = F.interpolate(pixels.round().clamp(0, 255), size=size, mode='bicubic', align_corners=False,
                                   antialias=True).round().clamp(0, 255)
        m = self.sd.pad_multiple
        pad = (0, -size[1] % m, 0, -size[0] % m)
        if any(pad):
            x, pixels = F.pad(x, pad, mode='replicate'), F.pad(pixels, pad, mode='replicate')
        return x, pixels

    def extract(self, img: torch.Tensor) -> list[list[torch.Tensor]]:
        """Raw SD features: ``out[level][branch]`` as float32 ``[B, C, ceil(H/s), ceil(W/s)]``.

        Runs without gradients and outside any autocast region (``--amp``): the frozen parts compute
        in their own dtype, whatever the trainable parts use.
        """
        with torch.no_grad(), torch.autocast(img.device.type, enabled=False):
            try:
                return self._extract(img)
            finally:
                self._trim_heap = False  # other users of the UNet (mid-block hook) must not trim

    def _extract(self, img: torch.Tensor) -> list[list[torch.Tensor]]:
        sd, timed = self.sd, self.stage_timer or no_timer
        b, _, h, w = img.shape
        with timed('vae'):
            x, pixels = self._prepare(img)
            self._trim_heap = self._heap_trims_pay(x)
            self._release_cpu_memory()
            mean, std = sd.encode_posterior(x)
            noisy = self.noise_policy.noisy_latents(  # one tensor per branch
                mean, std, len(self.specs), self.training, lambda z, n: sd.add_noise(z, n, self.timestep))
            del mean, std
        t = torch.tensor(self.timestep, device=x.device)
        embeddings = []
        for spec, prompt_index in zip(self.specs, self.branch_prompt):
            emb, key = self._branch_embedding(spec, prompt_index, b)
            embeddings.append((emb.to(sd.dtype), key))
        self._release_cpu_memory()
        residuals = self._controlnet_residuals(noisy, t, pixels, embeddings, timed)
        self._release_cpu_memory()

        per_level: list[list] = [[None] * len(self.specs) for _ in self.taps]
        for group in self.branch_groups:
            with timed('unet'):
                outs = self._unet_pass(group, noisy, t, embeddings, self._take_residuals(residuals, group))
            for branch, branch_outs in zip(group, outs):
                for level, i in enumerate(self.level_order):
                    per_level[level][branch] = self._to_input_grid(branch_outs[i].float(), h, w, self.tap_strides[i])
        return per_level

    def _heap_trims_pay(self, x: torch.Tensor) -> bool:
        """Trim the heap in this pass only if the VAE's full-resolution activations will not fit in it.

        Why: glibc serves blocks above its largest mmap threshold (32 MB) with fresh mappings, so those
        stack on the free heap the previous stage left; smaller ones reuse it, and trimming then only
        costs page faults (the tiny demo's training steps ran ~15% slower with trims).
        """
        if not (self.release_cpu_memory and x.device.type == 'cpu'):
            return False
        vae = self.sd.vae
        activation_bytes = x[:, :1].numel() * vae.config.block_out_channels[0] * vae.dtype.itemsize
        return activation_bytes > GLIBC_MAX_MMAP_THRESHOLD

    def _release_cpu_memory(self) -> None:
        """Between stages on CPU: one stage's freed activations must not stay resident under the next."""
        if self._trim_heap:
            release_free_heap_memory()

    def _controlnet_residuals(self, noisy: list[torch.Tensor], t: torch.Tensor, pixels: torch.Tensor,
                              embeddings: list[tuple], timed) -> list[tuple]:
        """Per branch ``(down residuals, mid residual)`` (``(None, None)`` without ControlNet).

        Control images are made once per condition; a ControlNet runs once per distinct input (noisy
        latents and prompt embedding), the inputs of one (net, condition, scale) batched into one call.
        """
        calls: dict = {}  # ControlNetSpec -> {(noisy latents id, embedding key): (noisy, embedding)}
        branch_keys = [(id(z), key) for z, (_, key) in zip(noisy, embeddings)]
        for spec, z, (emb, _), key in zip(self.specs, noisy, embeddings, branch_keys):
            for net in spec.controlnets:
                calls.setdefault(net, {}).setdefault(key, (z, emb))
        conditions: dict[tuple, torch.Tensor] = {}
        done: dict[tuple, tuple] = {}  # (ControlNetSpec, input key) -> (down, mid)
        b = noisy[0].shape[0]
        for net, by_key in calls.items():
            if net.condition_key not in conditions:
                with timed('conditions'):
                    conditions[net.condition_key] = build_condition(net.condition, pixels, **dict(net.condition_cfg))
            cond = conditions[net.condition_key].to(self.sd.dtype)
            keys = list(by_key)
            for chunk in ([keys] if self.batch_branches else [[k] for k in keys]):
                n = len(chunk)
                with timed('controlnet'):
                    down, mid = self.sd.controlnets[self.controlnet_index[net.path]](
                        torch.cat([by_key[k][0] for k in chunk]), t,
                        encoder_hidden_states=torch.cat([by_key[k][1] for k in chunk]),
                        controlnet_cond=cond.repeat(n, 1, 1, 1), conditioning_scale=net.scale, return_dict=False)
                for j, key in enumerate(chunk):
                    done[net, key] = ([d[j * b:(j + 1) * b] for d in down], mid[j * b:(j + 1) * b])
        out = []
        for spec, key in zip(self.specs, branch_keys):
            down = mid = None
            for net in spec.controlnets:  # several ControlNets: residuals add up (MultiControlNet)
                d, m = done[net, key]
                down = d if down is None else [a + r for a, r in zip(down, d)]
                mid = m if mid is None else mid + m
            out.append((down, mid))
        return out

    @staticmethod
    def _take_residuals(residuals: list, group: list[int]) -> list[tuple]:
        """The group's residuals, cleared from ``residuals``: the UNet pass then holds the only
        references and frees the ControlNet outputs once it has batched them."""
        taken = [residuals[i] for i in group]
        for i in group:
            residuals[i] = None
        return taken

    def _unet_pass(self, group: list[int], noisy: list[torch.Tensor], t: torch.Tensor, embeddings: list[tuple],
                   residuals: list[tuple]) -> list[list[torch.Tensor]]:
        """One UNet call for the branches ``group``, stopped after the last tap: their tap outputs.

        ``residuals``: the group's ControlNet residuals, handed over (see :meth:`_take_residuals`).
        """
        n, b = len(group), noisy[0].shape[0]
        down, mid = residuals[0]
        if n > 1 and any(r[0] is not None for r in residuals):
            ref_down, ref_mid = next(r for r in residuals if r[0] is not None)
            zeros = ([torch.zeros_like(d) for d in ref_down], torch.zeros_like(ref_mid))  # x + 0 == x
            parts = [r if r[0] is not None else zeros for r in residuals]
            down = [torch.cat([p[0][j] for p in parts]) for j in range(len(ref_down))]
            mid = torch.cat([p[1] for p in parts])
            # the batched copies are all the UNet needs: the ControlNet outputs and zeros go now
            del ref_down, ref_mid, zeros, parts
        del residuals
        keys = [self.unet_adapter_keys[i] for i in group]
        adapters = tuple(dict.fromkeys(kv for key in keys for kv in key))
        self._set_unet_adapters(adapters)
        batch = contextlib.nullcontext()
        if n > 1 and adapters:
            batch = mixed_adapter_batch(self._lora_layers, [key[0][0] if key else BASE_ADAPTER
                                                            for key in keys for _ in range(b)])
        with batch:
            outs = run_until_taps(self.sd.unet, self.tap_modules, torch.cat([noisy[i] for i in group]), t,
                                  encoder_hidden_states=torch.cat([embeddings[i][0] for i in group]),
                                  down_block_additional_residuals=down, mid_block_additional_residual=mid,
                                  return_dict=False)
        return [[o[j * b:(j + 1) * b] for o in outs] for j in range(n)]

    def _to_input_grid(self, feat: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
        """Crop the padding off; after a resize, interpolate back to the input's 1/stride grid."""
        sd_h, sd_w = self._sd_size(h, w)
        feat = feat[..., :math.ceil(sd_h / stride), :math.ceil(sd_w / stride)]
        size = (math.ceil(h / stride), math.ceil(w / stride))
        if tuple(feat.shape[-2:]) != size:
            feat = F.interpolate(feat, size=size, mode='bilinear', align_corners=False)
        return feat

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        feats = self.extract(img)
        if self.amalgamation is None:
            return [level[0] for level in feats]
        return self.amalgamation(feats)
