"""GATEFeatures: frozen diffusion features of several branches, by tap (the extractor; no mmseg here).

    from gate_features import GATEFeatures
    extractor = GATEFeatures.from_pretrained('checkpoints/stable-diffusion-v1-5', prompt='a photo', timestep=51)
    feats = extractor(images)         # images [B, 3, H, W] in [-1, 1]: {branch: {tap: [B, C, H/s, W/s]}}
    feats['basic']['up_blocks.1.upsamplers.0'].shape
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn

from .attention_maps import CrossAttentionMaps
from .branch_batching import lora_layers, plan_branch_groups
from .branches import AdapterRegistry, parse_branches
from .controlnets import BranchInput, controlnet_residuals, load_controlnets, take_residuals
from .denoiser_passes import DenoiserPasses
from .denoising import plan_branches
from .families import check_family_options
from .frozen_stack import FrozenStableDiffusion, find_modules, resolve_dtype
from .geometry import prepare_images, sd_size, to_input_grid
from .inference_blocks import chunk_feed_forward
from .ip_adapter import IPAdapters
from .massive_activations import TokenNormalizer
from .noise import NoisePolicy
from .prompts import BranchPrompts
from .pyramid import VPDPyramid
from .quantization import describe as describe_quantization
from .quantization import quantization_config
from .speed_levers import SpeedLevers
from .taps import feed_forwards_tapped, plan_levels, tappable_modules, to_feature_map
from .utils.finite import check_finite_images
from .utils.memory import HeapTrimPolicy
from .utils.timing import no_timer

#: outputs of the upsamplers of the first three up blocks (paper, Sec. 4): 1/32, 1/16, 1/8 for SD1.5
GATE_TAPS = ('up_blocks.0.upsamplers.0', 'up_blocks.1.upsamplers.0', 'up_blocks.2.upsamplers.0')


def known_keywords(init=None, *, passes_to=None):
    """Answer an unknown keyword of ``init`` (a config typo such as ``timesteps=51``) as unknown branch keys are
    answered: close matches and the allowed keys, instead of Python's bare ``unexpected keyword argument``.

    ``passes_to``: the initialiser that ``init``'s ``**kwargs`` go to; its keywords come first in the allowed list.
    """
    if init is None:
        return functools.partial(known_keywords, passes_to=passes_to)
    import difflib
    import inspect

    def names(fn):
        return [n for n, p in inspect.signature(fn).parameters.items() if n != 'self' and p.kind not in
                (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
    allowed = list(dict.fromkeys((names(passes_to) if passes_to else []) + names(init)))

    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            close = {k: difflib.get_close_matches(k, allowed, n=2, cutoff=0.6) for k in unknown}
            hints = '; '.join(f'{k!r}: did you mean {" or ".join(map(repr, c))}?' for k, c in close.items() if c)
            raise TypeError(f'{type(self).__name__}: unknown keys {unknown}' + (f' ({hints})' if hints else '')
                            + f'; allowed keys are {allowed}')
        return init(self, *args, **kwargs)
    return checked


class GATEFeatures(DenoiserPasses, nn.Module):
    """Diffusion features of several branches, with GATE's content-shift suppression: the extractor.

    The frozen denoiser is a UNet (SD1.x/2.x, SDXL) or a diffusion transformer (SD3/SD3.5, PixArt-Sigma/
    alpha, FLUX.1); what differs between them is its family's business (:mod:`.families`). One call,
    ``extractor(images)``, gives every branch's taps by name (:meth:`forward`); :meth:`extract` the levels
    that mmseg's :class:`~mmseg_gate.models.GATEDiffusionBackbone` (this class plus the amalgamation) amalgamates.

    Input: images normalised by ``mean``/``std`` (by default ``mean=std=127.5``: in [-1, 1], as SD expects; RGB).
    Give the statistics used (e.g. ImageNet's) and they are undone here.

    Args:
        pretrained: local diffusers folder or hub id of a pipeline: SD1.x, SD2.x (also 768
            v-prediction), SDXL, SD3/SD3.5, PixArt-Sigma/alpha or FLUX.1-dev/schnell, told apart by the folder
            (:mod:`.families`). DiTs: taps are ``transformer_blocks.N`` (FLUX also ``single_transformer_blocks.N``;
            image tokens on the 1/16 grid), LoRAs and ControlNets for SD3 and FLUX; ``denoising_from``,
            ``attention`` and IP-Adapters are UNet-only.
        branches: list of dicts ``dict(name, prompt=None, timestep=None, denoising_from=None,
            loras=[dict(path, scale)], controlnets=[dict(path, condition='canny', scale=1.0,
            condition_cfg={}, mode=None)], ip_adapters=[dict(path, image_encoder, scale=1.0)])`` (``mode``: a
            union ControlNet's control type); a branch's own
            ``timestep`` (multi-timestep ensembles) still shares the batched UNet call; IP-Adapters
            take the input image as their image prompt (:mod:`.ip_adapter`).
        prompt: default prompt of every branch without its own.
        timestep: the scheduler's training timestep t (0..999): the latents are noised to
            alpha_bar[t] and the UNet gets t. The authors' "t=50" went through PNDM's img2img
            timesteps (``steps_offset=1``) and landed on 51, which the GATE configs use. With
            ``denoising_from`` it is where the denoising stops, moved to the first scheduled timestep
            not below it if the schedule lacks it (logged once at build).
        sigma: flow-matching families (SD3/SD3.5, FLUX) only: noise every branch to this sigma (``x_t = (1 -
            sigma) x_0 + sigma n``, the denoiser gets ``1000 sigma``) instead of mapping ``timestep`` the authors'
            way (img2img at strength ``t / 1000`` through the model's shifted 28-step schedule, first step:
            SD3's shift 3 gives sigma 0.111 for t=50, FLUX.1-dev 0.126 at 512x512 and 0.195 at 1024x1024;
            :mod:`.flow_matching`).
        guidance: guidance-distilled denoisers (FLUX.1-dev) only: the guidance value they are given (``None``:
            1.0, what the authors' extractor passed; FluxPipeline's default is 3.5).
        taps: denoiser module names whose outputs are the features, in any order and at any depth:
            feature maps (upsamplers, resnets, ``attentions.N``) or tokens (transformer blocks,
            ``attn1``/``attn2`` and their projections, ``ff``), which are laid back on their latent
            grid (:mod:`.taps`; ``tools/list_taps.py`` lists them). Levels are sorted by stride.
        token_norm: diffusion transformers: ``'adaln'`` normalises each tapped block's output tokens
            with LayerNorm without affine and the block's own AdaLN modulation (DiTF's treatment of
            massive activations, :mod:`.massive_activations`); unvalidated on real data.
        drop_channels: channels of the tapped blocks' tokens to zero (massive activations): indices,
            ``{tap: indices}`` or ``'auto'`` (found at build on a seeded calibration input, recorded in
            checkpoints); unvalidated on real data.
        merge_same_stride: taps that share a stride form one level of concatenated channels
            (``True``) or a level each (``False``).
        attention: cross-attention maps as one more feature (:class:`CrossAttentionMaps`):
            ``dict(layers='up_cross', strides=(32, 16), average_layers=True, stride=8)`` are the
            authors' (154 channels at 1/8 for SD1.5); only those layers give up fused attention.
            Its channels are one block of text tokens (77) per query grid, or per layer with
            ``average_layers=False``, coarsest grid first whatever the order of ``strides`` (the
            authors': 1/32's 77, then 1/16's 77). Its level sits among the tap levels by its output
            ``stride``, after the taps of that stride: with ``merge_same_stride=False`` a level of its
            own right after the tap level(s) of its stride (SD1.5's GATE taps + the authors' maps:
            1/8 tap, maps at 1/8, 1/16, 1/32, ``in_channels=[640, 154, 1280, 1280]``), with ``True``
            its channels follow those taps' channels in their level (``[640 + 154, 1280, 1280]``).
            Both decide the head's ``in_channels``.
        dtype: 'fp32' | 'fp16' | 'bf16' for the frozen parts (fp32 on CPU).
        noise: the noise policy (:mod:`.noise`): ``'gate'`` (default, the authors' training: fresh
            posterior sample and noise per branch and step while training; seeded per branch in
            eval, so the same image gives the same features), ``'fixed'`` (one seeded pattern for
            all branches, train and eval, posterior mode), ``'random'`` (fresh also in eval) or
            ``'none'`` (clean latents, posterior mode: with ``timestep=0`` the features of the clean
            image, as CleanDIFT's UNets expect).
        noise_seed: seed of the deterministic draws.
        sample_posterior: sample the VAE posterior (``None``: as the noise policy says).
        unet_input_scale: resize every input by this factor before SD, keeping its aspect ratio
            (0.5: the paper's Cityscapes 1024 crops -> 512), then pad as usual; the SD input is
            resized bilinearly and the control images are made from an antialiased bicubic resize
            of the pixels (as the authors' PIL path). Features are brought back to the input's
            1/stride grid. ``None`` (default): no resize.
        denoising_from: run diffusers' img2img with strength ``denoising_from / 1000`` before
            extracting (the authors' ``denoising_from``, :mod:`.denoising`; per branch too): the latents
            are noised to img2img's first timestep, which need not be this value (PNDM from 60 starts
            at 61, DDIM from 150 at 141), and the scheduler steps with each branch's conditioning down
            to the first scheduled timestep not below ``timestep``, where the features are taken and
            which the UNet is given (``timestep=55, denoising_from=200``: 61, logged once at build).
            Deterministic in eval.
        denoising_scheduler: a diffusers scheduler class for those steps (default: the folder's).
        mean, std: the data preprocessor's normalisation, undone here.
        keep_text_encoder: keep the text encoders after build, so per-image prompts (:meth:`set_prompts`) can be encoded.
        batch_branches: run the branches' UNet passes (and the calls of a shared ControlNet) as one
            batch where their LoRA adapters allow it (peft mixed-adapter batches): faster, same
            features; the UNet activations of those branches are held together.
        compile: ``torch.compile`` the VAE encoder and the ControlNets (``True``, or a dict of
            ``torch.compile`` kwargs such as ``dict(mode='max-autotune')``); the denoiser: ``compile_denoiser``.
            The first forward pays the compilation (about 30 s for SD1.5's VAE on a CPU).
        compile_denoiser: ``True`` or a dict of ``torch.compile`` kwargs: regional compilation of the denoiser's
            repeated blocks (diffusers' ``compile_repeated_blocks``), which keeps the early exit and the adapter
            switches working (:mod:`.speed_levers`). Off by default: unmeasured on GPUs.
        channels_last: UNet families: the denoiser's and ControlNets' weights in channels_last (cuDNN skips its
            layout transposes; no faster on CPU). Off by default.
        sdpa_backends: the SDPA kernels torch may use, in order of preference (``('flash', 'efficient')``;
            also ``'cudnn'``, ``'math'``); ``None``: torch's choice. Off by default.
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
        vae: another VAE (folder or hub id), e.g. ``madebyollin/sdxl-vae-fp16-fix`` to run SDXL's VAE in
            fp16 (without it an fp16 SDXL VAE runs in float32: it overflows in fp16).
        unet: another denoiser, UNet or transformer (folder with ``config.json``, pipeline folder or hub id):
            a fine-tune (CleanDIFT, DreamBooth) with ``pretrained``'s VAE, text encoders and scheduler.
        drop_text_encoders: optional text encoders not to load: ``('text_encoder_3',)`` drops SD3's T5 (4.7 B
            parameters); its tokens are then zeros, as in diffusers without it.
        quantization: load the denoiser and the ControlNets quantized (diffusers' ``quantization_config``):
            ``dict(type='BitsAndBytesConfig', load_in_4bit=True, ...)`` or ``dict(type='TorchAoConfig',
            quant_type='Int8WeightOnlyConfig')`` (:mod:`.quantization`; FLUX.1 on a 24 GB card). LoRA adapters stay in
            ``dtype``.
        pyramid: ``'vpd'`` or ``dict(type='vpd', fmap_border=(1, 1))``: the four levels at strides 8/16/32/64
            of mmseg's ``VPDDepthHead`` (taps ``VPD_TAPS``/``SDXL_VPD_TAPS``, a missing 1/64 pooled from 1/32;
            DiTs: with a ``MultiLevelNeck``), kept on the input's grid padded to 64; inputs whose padding is not
            ``fmap_border`` (the head's) cells of 32 are refused (:mod:`.pyramid`).
        prompt_classes: scene names in class-id order, or an mmseg dataset class (``'NYUDataset'``): branch
            prompts with ``{}`` become per-scene prompts, encoded at build and chosen per image by the class ids
            ``DepthEstimator`` passes (it does when ``class_embed_select``, set then; :mod:`.scene_prompts`).
        hub_kwargs: extra ``from_pretrained`` kwargs (``revision``, ``local_files_only``, ...).
    """

    @known_keywords
    def __init__(self,
                 pretrained: str,
                 branches: Sequence[dict] = (dict(name='basic'),),
                 prompt: str = '',
                 timestep: int = 50,
                 sigma: float | None = None,
                 taps: Sequence[str] = GATE_TAPS,
                 merge_same_stride: bool = False,
                 token_norm: str | None = None,
                 drop_channels: str | Sequence[int] | dict | None = None,
                 attention: dict | None = None,
                 denoising_from: int | None = None,
                 denoising_scheduler: str | None = None,
                 dtype: str = 'fp32',
                 noise: str = 'gate',
                 noise_seed: int = 0,
                 sample_posterior: bool | None = None,
                 unet_input_scale: float | None = None,
                 unet_input_size: Sequence[int] | None = None,
                 mean: Sequence[float] = (127.5, 127.5, 127.5),
                 std: Sequence[float] = (127.5, 127.5, 127.5),
                 keep_text_encoder: bool = False,
                 batch_branches: bool = True,
                 compile: bool | dict = False,
                 compile_denoiser: bool | dict = False,
                 channels_last: bool = False,
                 sdpa_backends: Sequence[str] | None = None,
                 feed_forward_chunks: int = 4,
                 release_cpu_memory: bool = True,
                 vae: str | None = None,
                 unet: str | None = None,
                 drop_text_encoders: Sequence[str] = (),
                 guidance: float | None = None,
                 quantization: dict | None = None,
                 pyramid: str | dict | None = None,
                 prompt_classes: str | Sequence[str] | None = None,
                 hub_kwargs: dict | None = None) -> None:
        super().__init__()
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
        self.pyramid = VPDPyramid.build(pyramid)
        self.levers = SpeedLevers(compile, compile_denoiser, channels_last, sdpa_backends)
        if self.pyramid is not None and unet_input_scale is not None:
            raise ValueError(f"pyramid='vpd' keeps the levels on the input's padded grid; unet_input_scale="
                             f'{unet_input_scale} resizes it: resize in the data pipeline instead')
        self.specs = parse_branches(branches, prompt)
        self.timestep = int(timestep)
        self.timesteps = [self.timestep if s.timestep is None else s.timestep for s in self.specs]
        self.heap = HeapTrimPolicy(release_cpu_memory)
        self._active_adapters: tuple | None = None  # unknown until the first switch
        self._levels: dict = {}  # (timestep, tokens) -> noise level
        self.stage_timer = None  # a StageTimer to profile extract() (tools/benchmark.py)
        self.unet_input_scale = float(unet_input_scale) if unet_input_scale else None
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

        sd = FrozenStableDiffusion(pretrained, resolve_dtype(dtype), vae=vae, unet=unet,
                                   drop_text_encoders=drop_text_encoders, guidance=guidance,
                                   quantization=quantization_config(quantization), **(hub_kwargs or {}))
        # Not a registered submodule: frozen weights stay out of parameters(), state_dict(), the
        # optimizer and DDP; _apply() below still moves them with the model.
        object.__setattr__(self, 'sd', sd)
        steps = sd.scheduler.config.num_train_timesteps
        for spec, t in zip(self.specs, self.timesteps):
            if not 0 <= t < steps:
                raise ValueError(f'timestep={t} (branch {spec.name!r}) is outside [0, {steps})')
        check_family_options(sd.family, self.specs, denoising_from, attention, sigma, token_norm, drop_channels)
        self.levers.check_family(sd.family)
        self.img2img, self.plans, self.timesteps = plan_branches(sd, self.specs, self.timesteps, denoising_from,
                                                                 denoising_scheduler, self.noise_policy.mode)
        self.sigma = None if sigma is None else float(sigma)
        self.adapters = AdapterRegistry(self.specs, sd.family)
        denoiser_config = sd.denoiser_config() if sd.family.name == 'sdxl' else None  # SGM-named SDXL LoRAs need it
        for target in sd.text_encoders:
            self.adapters.load(sd.text_encoders[target], target, denoiser_config)
        self.prompts = BranchPrompts(sd, self.specs, self.adapters, prompt_classes)
        self.class_embed_select = self.prompts.scenes is not None  # DepthEstimator then passes (img, class ids)
        if not keep_text_encoder:
            sd.release_text_encoder()
        sd.load_denoiser()
        self.adapters.load(sd.denoiser, sd.family.denoiser, sd.denoiser.config)
        self._lora_params = [p for n, p in sd.denoiser.named_parameters() if 'lora_' in n]
        self._lora_layers = lora_layers(sd.denoiser)
        self.controlnet_index = load_controlnets(sd, self.specs, resolve_dtype(dtype), hub_kwargs or {})
        self.ip = IPAdapters.for_branches(sd, self.specs, attention, resolve_dtype(dtype), hub_kwargs or {})
        sd.requires_grad_(False).eval()  # again: peft adapters and ControlNets arrived after __init__
        if release_cpu_memory and getattr(sd.denoiser, 'mid_block', None) is not None:
            # the down blocks' freed activations go too
            sd.denoiser.mid_block.register_forward_pre_hook(self.heap.release)
        self.taps = tuple(taps)
        self.tap_modules = find_modules(sd.denoiser, self.taps)
        self.token_normalizer = TokenNormalizer(sd.family, self.taps, self.tap_modules, token_norm, drop_channels)
        self.attention = None if attention is None else CrossAttentionMaps(sd.denoiser, **attention)
        if sd.family.chunkable_feed_forwards:
            chunk_feed_forward(sd.denoiser, int(feed_forward_chunks),
                               exclude=feed_forwards_tapped(sd.denoiser, self.taps))
        # per branch its denoiser adapters as ((adapter name, scale), ...)
        self.adapter_keys = [tuple(zip(*self.adapters.of(spec, sd.family.denoiser))) for spec in self.specs]
        self.batch_branches = batch_branches
        # branches share a denoiser call when their LoRAs allow it (peft) and their IP-Adapter scales agree
        ip_keys = self.ip.branch_scales if self.ip else [()] * len(self.specs)
        self.branch_groups = []
        for key in dict.fromkeys(ip_keys):
            members = [i for i, k in enumerate(ip_keys) if k == key]
            self.branch_groups += [[members[j] for j in g] for g in
                                   plan_branch_groups([self.adapter_keys[i] for i in members], batch_branches)]
        self.tap_info = self._probe_taps()
        self.levels = plan_levels(self.tap_info, merge_same_stride)
        #: channels of each level (before any amalgamation): the input channels of what follows
        self.level_channels = [sum(self.tap_info[i].channels for i in level) for level in self.levels]
        self.strides = [self.tap_info[level[0]].stride for level in self.levels]
        self.levers.apply(sd)  # after the probe: its odd-sized input would be one more compiled graph

    @classmethod
    def from_pretrained(cls, pretrained: str, **kwargs) -> 'GATEFeatures':
        """The extractor of ``pretrained`` (a diffusers folder or hub id) in eval mode: the same image gives the
        same features. ``kwargs``: the arguments of this class (``branches``, ``taps``, ``timestep``, ...)."""
        return cls(pretrained, **kwargs).eval()

    @property
    def tap_names(self) -> list[str]:
        """The names of :meth:`forward`'s features: the taps, then ``'attention'`` with ``attention=``."""
        return [*self.taps, *(['attention'] if self.attention is not None else [])]

    # ----------------------------------------------------------------- nn.Module plumbing
    def _apply(self, fn, recurse: bool = True):
        self.sd._apply(fn)  # device/dtype moves reach the hidden frozen stack too
        return super()._apply(fn, recurse)

    def frozen_provenance(self) -> dict:
        """What the frozen parts were built from (recorded in checkpoints by ``GATECheckHook``)."""
        out = dict(pretrained=str(self.sd.pretrained), loras=dict(self.adapters.sha256),
                   controlnets=sorted(self.controlnet_index), timestep=self.timestep, taps=list(self.taps),
                   dtype=str(self.sd.dtype).replace('torch.', ''))
        overrides = dict(unet=self.sd.unet_path, vae=self.sd.vae_path,  # only when set: older checkpoints match
                         family=self.sd.family.name if self.sd.family.denoiser != 'unet' else None, sigma=self.sigma,
                         guidance=self.sd.guidance, quantization=describe_quantization(self.sd.quantization),
                         token_norm=self.token_normalizer.provenance(),
                         timesteps=self.timesteps if len(set(self.timesteps) | {self.timestep}) > 1 else None,
                         ip_adapters=self.ip and dict(self.ip.sha256),
                         denoising_from=self.img2img and [p and p.requested for p in self.plans])
        return {**out, **{k: v for k, v in overrides.items() if v is not None}}

    def frozen_modules(self) -> FrozenStableDiffusion:
        """The frozen stack (VAE, denoiser with adapters, ControlNets)."""
        return self.sd

    def extra_repr(self) -> str:
        return (f'pretrained={self.sd.pretrained!r} ({self.sd.family.name}), branches={[s.name for s in self.specs]}, '
                f'taps={self.taps}, timesteps={self.timesteps}, frozen dtype={self.sd.dtype}')

    def set_prompts(self, prompts: Sequence[str | None] | None) -> None:
        """Per-image prompts (e.g. captions) for the following forwards (:class:`BranchPrompts`)."""
        self.prompts.set_prompts(prompts)

    # ----------------------------------------------------------------- forward
    def extract(self, img: torch.Tensor, class_ids: torch.Tensor | None = None) -> list[list[torch.Tensor]]:
        """Raw features by level: ``out[level][branch]`` as float32 ``[B, C, ceil(H/s), ceil(W/s)]`` (``pyramid``:
        the grid of the input padded to 64); ``class_ids``: each image's scene (``prompt_classes``).

        Runs without gradients and outside any autocast region (``--amp``): the frozen parts compute
        in their own dtype, whatever the trainable parts use.
        """
        per_level: list[list] = [[None] * len(self.specs) for _ in self.levels]

        def collect(branch, outs, sd_hw, h, w):
            for level, taps in enumerate(self.levels):
                maps = [to_feature_map(outs[i], self.tap_info[i], sd_hw).float() for i in taps]
                feat = maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)
                per_level[level][branch] = to_input_grid(feat, h, w, self.strides[level], self.unet_input_scale)
        self._run(img, class_ids, collect)
        return per_level

    def forward(self, images: torch.Tensor,
                class_ids: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Named features: ``out[branch name][tap name]`` as float32 ``[B, C, ceil(H/s), ceil(W/s)]`` on the input's
        1/stride grid (s: :attr:`tap_info`), tokens laid on their grid; the cross-attention maps (``attention=``)
        are the tap ``'attention'``. ``images``: ``[B, 3, H, W]`` normalised with ``mean``/``std`` (the defaults:
        RGB in [-1, 1]). :func:`levels` (:meth:`to_levels`) groups them as :meth:`extract` does."""
        named: dict[str, dict[str, torch.Tensor]] = {spec.name: {} for spec in self.specs}

        def collect(branch, outs, sd_hw, h, w):
            for i, (name, tap) in enumerate(zip(self.tap_names, self.tap_info)):
                named[self.specs[branch].name][name] = to_input_grid(
                    to_feature_map(outs[i], tap, sd_hw).float(), h, w, tap.stride, self.unet_input_scale)
        self._run(images, class_ids, collect)
        return named

    def to_levels(self, features: dict[str, dict[str, torch.Tensor]]) -> list[list[torch.Tensor]]:
        """:meth:`forward`'s named features as :meth:`extract`'s ``out[level][branch]``: taps sorted by stride,
        those of one stride concatenated with ``merge_same_stride`` (equal to :meth:`extract` without
        ``unet_input_scale``; with it the resize back runs per tap, not per level)."""
        return [[torch.cat([features[spec.name][self.tap_names[i]] for i in taps], dim=1) if len(taps) > 1 else
                 features[spec.name][self.tap_names[taps[0]]] for spec in self.specs] for taps in self.levels]

    def _run(self, img: torch.Tensor, class_ids, collect) -> None:
        """The extraction; ``collect(branch, tap outputs, SD input size, h, w)`` takes each branch's outputs."""
        check_finite_images(img)  # a NaN pixel would reach every branch and, through BatchNorm, the whole batch
        with torch.no_grad(), torch.autocast(img.device.type, enabled=False), self.levers.context(img.device):
            try:
                self._extract(img, class_ids, collect)
            finally:
                self.heap.stop()

    def _extract(self, img: torch.Tensor, class_ids: torch.Tensor | None, collect) -> None:
        sd, timed = self.sd, self.stage_timer or no_timer
        with timed('vae'):
            # checks the shape first: a clear error, not a failed unpacking
            pad_multiple = sd.pad_multiple if self.pyramid is None else self.pyramid.pad_multiple(sd.pad_multiple)
            x, pixels = prepare_images(img, self.mean, self.std, self.unet_input_scale, pad_multiple)
            b, _, h, w = img.shape
            if self.pyramid is not None:  # the levels keep the padded grid, which the head's border must cut
                self.pyramid.check_input(h, w)
                h, w = self.pyramid.grid(h, w)
            self.heap.start(x, sd.vae)
            self.heap.release()
            mean, std = sd.encode_posterior(x)
            sd_hw = tuple(x.shape[-2:])
            noise_levels = [self._noise_level(t, sd_hw) for t in self.timesteps]
            levels = [level if plan is None else plan for level, plan in zip(noise_levels, self.plans)]
            add_noise = self.img2img.noise_adder(sd) if self.img2img else sd.add_noise
            noisy = self.noise_policy.noisy_latents(  # one tensor per branch
                mean, std, levels, self.training, add_noise)
            del mean, std
        sd_h, sd_w = sd_size(h, w, self.unet_input_scale)
        condition_kwargs = functools.partial(sd.condition_kwargs, size=(sd_h, sd_w))
        image_embeds = None
        if self.ip is not None:
            with timed('ip_adapter'):
                image_embeds = [e.to(sd.dtype) for e in self.ip.image_embeds(pixels[..., :sd_h, :sd_w])]
        inputs = []
        for branch, (latents, t, level) in enumerate(zip(noisy, self.timesteps, noise_levels)):
            text, text_key = self.prompts.branch_condition(branch, b, class_ids)
            inputs.append(BranchInput(latents, torch.full((b,), sd.family.model_timestep(level), device=x.device),
                                      text.to(sd.dtype), (id(latents), t, text_key), image_embeds))
        del noisy
        if self.img2img is not None:  # img2img steps: full denoiser (and ControlNet) passes per step
            with timed('denoising'):
                self.img2img.run_branches(self.plans, self.branch_groups, inputs, lambda members, parts: self._pass(
                    members, parts, controlnet_residuals(sd, self.controlnet_index, [self.specs[i] for i in members],
                                                         parts, pixels, condition_kwargs, self.batch_branches, timed),
                    condition_kwargs, full=True))
        self.heap.release()
        residuals = controlnet_residuals(sd, self.controlnet_index, self.specs, inputs, pixels, condition_kwargs,
                                         self.batch_branches, timed)
        self.heap.release()

        for group in self.branch_groups:
            with timed('unet'):
                outs = self._pass(group, [inputs[i] for i in group], take_residuals(residuals, group),
                                  condition_kwargs)
            for branch, branch_outs in zip(group, outs):  # a group's outputs become maps before the next group runs
                collect(branch, branch_outs, sd_hw, h, w)



def levels(extractor: GATEFeatures, features: dict[str, dict[str, torch.Tensor]]) -> list[list[torch.Tensor]]:
    """``extractor(images)``'s named features as ``out[level][branch]``, the backbone's levels
    (:meth:`GATEFeatures.to_levels`; ``extractor.levels`` itself is the plan: tap indices per level)."""
    return extractor.to_levels(features)


def list_taps(pretrained: str, size: tuple[int, int] = (512, 512), **kwargs) -> list:
    """Every module of ``pretrained``'s denoiser that can be a tap, with its kind, channels and stride at an input of
    ``size`` (``tools/list_taps.py``); ``kwargs``: ``unet``, ``drop_text_encoders``, ``dtype``, ..."""
    return tappable_modules(pretrained, tuple(size), **kwargs)


__all__ = ['GATE_TAPS', 'GATEFeatures', 'known_keywords', 'levels', 'list_taps']
