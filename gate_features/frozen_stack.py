"""The frozen diffusion stack: load once, encode once, run the denoiser only as far as needed."""
from __future__ import annotations

import difflib
import gc
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .log import print_log

from .families import TextCondition, detect_family, first_output
from .flow_matching import image_seq_len
from .inference_blocks import use_inplace_resnets
from .utils.memory import to_channels_last

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f'dtype={dtype!r} is not supported: use one of {sorted(DTYPES)} '
                         '(fp32 on CPU; bf16 or fp16 on GPU)')
    return DTYPES[dtype]


#: what the configs expect at their default paths (README: "Reproducing GATE"): hub repository, the files
#: to include (as the README's commands), the local folder the configs read; SDXL's when the path names it
_DIFFUSERS_FILES = ('*.json', '*.txt', 'text_encoder/model.safetensors', 'text_encoder_2/model.safetensors',
                    'unet/diffusion_pytorch_model.safetensors', 'vae/diffusion_pytorch_model.safetensors')
_CONTROLNET_FILES = ('config.json', 'diffusion_pytorch_model.safetensors')
_HUB_REPOS = {'Stable Diffusion model': ('stable-diffusion-v1-5/stable-diffusion-v1-5', _DIFFUSERS_FILES[:3]
                                         + _DIFFUSERS_FILES[4:]),
              'ControlNet': ('lllyasviel/sd-controlnet-canny', _CONTROLNET_FILES)}
_HUB_REPOS_XL = {'Stable Diffusion model': ('stabilityai/stable-diffusion-xl-base-1.0', _DIFFUSERS_FILES),
                 'ControlNet': ('diffusers/controlnet-canny-sdxl-1.0', _CONTROLNET_FILES)}


def download_command(path: str, what: str) -> str | None:
    """The ``hf download`` command of the weights the configs expect at ``path`` (the README's filters),
    into ``checkpoints/<repository name>``; ``None`` for what has no default repository."""
    repos = _HUB_REPOS_XL if 'xl' in Path(str(path)).name.lower() else _HUB_REPOS
    if what not in repos:
        return None
    repo, files = repos[what]
    includes = ' '.join(f'--include "{f}"' if '*' in f else f'--include {f}' for f in files)
    return f'hf download {repo} {includes} --local-dir checkpoints/{repo.split("/")[-1]}'


def _close_paths(path: str) -> list[str]:
    """Existing siblings of ``path`` with a similar name: the folder a typo meant."""
    p = Path(os.path.expanduser(str(path)))
    parent = p.parent if str(p.parent) else Path('.')
    if not parent.is_dir():
        return []
    names = difflib.get_close_matches(p.name, [c.name for c in parent.iterdir()], n=3, cutoff=0.6)
    return [str(Path(str(path)).parent / n) for n in names]


def _not_found(path: str, what: str) -> str:
    close = _close_paths(path)
    command = download_command(path, what)
    return (f'{what} not found at {str(path)!r}.'
            + (f' Close matches: {close}.' if close else '')
            + (f' Download it: `{command}` (README "Reproducing GATE", step 1), and point the config at that '
               'folder (e.g. --cfg-options sd_path=...)' if command else
               ' Download it (its page or docs/models.md names the repository) or point the config at the right '
               'folder (e.g. with --cfg-options)')
            + '; tiny test weights come from `python tools/make_tiny_sd.py`.')


def _is_repo_id(path: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(str(path))
    except HFValidationError:
        return False
    return not str(path).startswith(('.', '/', '~'))


def _hub_unavailable(repo_id: str) -> str | None:
    """Why ``repo_id`` cannot come from the hub, found at once (``None``: it can, or is cached).

    The hub's file downloads retry a failed connection 5 times (~25 s) before diffusers gives up, so the
    answer is taken first from the local cache, the offline mode (``HF_HUB_OFFLINE``), a first path part
    that is a local folder (``checkpoints/...``: a local path was meant) or one metadata request."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError
    if huggingface_hub.try_to_load_from_cache(repo_id, 'model_index.json') or \
            huggingface_hub.try_to_load_from_cache(repo_id, 'config.json'):
        return None
    if huggingface_hub.is_offline_mode():
        return 'HF_HUB_OFFLINE is set and the hub cache has no copy'
    if Path(str(repo_id).split('/')[0]).is_dir():
        return f'{str(repo_id).split("/")[0]}/ is a local folder, so this is read as a local path'
    try:
        huggingface_hub.HfApi().model_info(repo_id, timeout=10)  # one request, no retries
    except GatedRepoError:
        return None  # it exists: from_pretrained says what access it needs
    except Exception as error:  # noqa: BLE001 (offline, no such repository, refused: all mean "not from the hub")
        return f'the hub answered {type(error).__name__}'
    return None


def check_weights_location(path: str, what: str, subfolders: Sequence[str] = ()) -> None:
    """Fail before diffusers does, with a message that says what to download and where.

    A string that is no existing path but a valid hub id (``owner/name``) is left to ``from_pretrained``
    when the hub can serve it (:func:`_hub_unavailable`; ``checkpoints/stable-diffusion-v1-5`` is a valid
    hub id too); :func:`from_pretrained_or_explain` turns a later hub failure into the same message.
    """
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        if not _is_repo_id(path):
            raise FileNotFoundError(_not_found(path, what))
        why = _hub_unavailable(str(path))
        if why is not None:
            raise FileNotFoundError(f'{_not_found(path, what)} (tried it as a hub id: {why})')
    missing = [s for s in subfolders if not (p / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f'{what} at {str(path)!r} is not a diffusers folder: missing {missing}. Use the '
            'diffusers layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).')


def from_pretrained_or_explain(load, path: str, what: str, **kwargs):
    """``load(path, **kwargs)``; when ``path`` is no local folder and the hub fails too (offline, no
    such repo), raise our "download it / point the config at it" message instead of the hub's."""
    try:
        return load(path, **kwargs)
    except OSError as err:  # huggingface_hub and diffusers raise OSError subclasses for missing repos
        if Path(os.path.expanduser(str(path))).exists():
            raise
        raise FileNotFoundError(f'{_not_found(path, what)} (tried it as a hub id: {type(err).__name__})') from err


class _TapsComplete(Exception):
    """Raised by the last tap's hook to stop the denoiser forward early."""


def find_modules(model: nn.Module, names: Sequence[str], what: str = 'denoiser') -> list[nn.Module]:
    """Look modules up by dotted name; an unknown name fails with the closest valid names."""
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.6)
            raise KeyError(f'tap {name!r} is not a module of the {what}; close matches: {close}. '
                           "SD1.5's GATE taps are 'up_blocks.{0,1,2}.upsamplers.0', a DiT's 'transformer_blocks.N'; "
                           '`python tools/list_taps.py PRETRAINED` lists them.')
        found.append(modules[name])
    return found


def run_until_taps(model: nn.Module, tap_modules: Sequence[nn.Module], *args, select=first_output,
                   **kwargs) -> list[torch.Tensor]:
    """Call ``model(*args, **kwargs)`` and return the outputs of ``tap_modules``.

    The forward stops right after the last of them has run, so nothing deeper is computed; the
    captured tensors are exactly those that forward hooks on a full forward would see.
    ``select(module, output)``: the part of a module's output to keep (the family's image part:
    MMDiT blocks return text and image tokens).
    """
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def fn(module, inputs, output):
            captured[index] = select(module, output)
            if len(captured) == len(tap_modules):
                raise _TapsComplete
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(tap_modules)]
    try:
        model(*args, **kwargs)
    except _TapsComplete:
        pass
    finally:
        for h in handles:
            h.remove()
    if len(captured) != len(tap_modules):
        raise RuntimeError('some taps never ran during the denoiser forward; choose modules the forward calls')
    return [captured[i] for i in range(len(tap_modules))]


def _has_component(pretrained: str, attribute: str, hub_kwargs: dict) -> bool:
    """Whether an optional component is part of the pipeline: its folder, or (hub ids) a class named
    for it in ``model_index.json``."""
    local = Path(os.path.expanduser(str(pretrained)))
    if local.is_dir():
        return (local / attribute).is_dir()
    from .families import _components
    value = _components(pretrained, **hub_kwargs).get(attribute)
    return bool(value) and value[0] is not None


class FrozenStableDiffusion(nn.Module):
    """VAE encoder, denoiser, noise scheduler and text encoding of one diffusion checkpoint, all frozen.

    The family (SD1/2, SDXL, SD3/3.5, PixArt-Sigma/alpha: :mod:`.families`) is read from the folder and
    says everything that differs; this class and the code above it speak of *the denoiser* (a UNet or
    a transformer). The text encoders are only needed for the prompts: :meth:`encode_prompt` runs them
    and :meth:`release_text_encoder` frees them once the prompts are cached.

    Args:
        pretrained: diffusers folder or hub id of the whole pipeline.
        dtype: dtype of the frozen parts; the VAE runs in float32 instead when it is fp16 and its
            config says ``force_upcast`` (SDXL's VAE overflows in fp16).
        vae: another VAE (folder or hub id, e.g. the fp16-fix SDXL VAE) instead of ``pretrained``'s.
        unet: another denoiser (folder or hub id: a fine-tune such as CleanDIFT's UNet, DreamBooth) with
            the VAE, text encoders and scheduler of ``pretrained``.
        drop_text_encoders: optional text encoders not to load (SD3's T5, ``'text_encoder_3'``: 4.7 B
            parameters; the prompt then gets zeros in its place, as diffusers does without it).
        guidance: the guidance value of guidance-distilled denoisers (FLUX.1-dev; ``None``: the family's default).
        quantization: load the denoiser and the ControlNets quantized: a diffusers quantization config
            (:func:`.quantization.quantization_config`).
    """

    def __init__(self, pretrained: str, dtype: torch.dtype = torch.float32, vae: str | None = None,
                 unet: str | None = None, drop_text_encoders: Sequence[str] = (), guidance: float | None = None,
                 quantization=None, **hub_kwargs) -> None:
        super().__init__()
        check_weights_location(pretrained, 'Stable Diffusion model')
        for path, what in ((vae, 'VAE'), (unet, 'denoiser')):
            if path is not None:
                check_weights_location(path, what)
        # the first file to read: where a bad path or an offline hub shows
        self.family = from_pretrained_or_explain(detect_family, pretrained, 'Stable Diffusion model', **hub_kwargs)
        family = self.family
        bad = set(drop_text_encoders) - set(family.optional_text_encoders)
        if bad:
            raise ValueError(f'drop_text_encoders={sorted(bad)}: the {family.name} family can only drop '
                             f'{list(family.optional_text_encoders) or "none of its text encoders"}')
        encoders = [a for a in family.text_encoders if a not in drop_text_encoders
                    and (a not in family.optional_text_encoders or _has_component(pretrained, a, hub_kwargs))]
        check_weights_location(pretrained, 'Stable Diffusion model',
                               (() if unet else (family.denoiser,)) + ('vae',)
                               + tuple(x for a in encoders for x in (a, family.text_encoders[a])))
        self.pretrained, self.vae_path, self.unet_path = pretrained, vae, unet
        self.hub_kwargs, self.load_kwargs = hub_kwargs, dict(dtype=dtype, **hub_kwargs)
        self.guidance, self.quantization = guidance, quantization
        self._denoiser_config = None
        if guidance is not None:  # the only option checked against the denoiser's config: no read otherwise
            family.check_options(self.denoiser_config(), guidance)
        # text first: prompts are encoded and the encoders released before the large models load,
        # which keeps the build's peak memory at what the forward needs
        self.text_encoders = nn.ModuleDict()
        self.tokenizers = {}
        for attribute in encoders:
            self.text_encoders[attribute] = from_pretrained_or_explain(
                family.text_encoder_class(attribute).from_pretrained, pretrained, 'Stable Diffusion model',
                subfolder=attribute, **self.load_kwargs)
            self.tokenizers[attribute] = family.tokenizer_class(attribute).from_pretrained(
                pretrained, subfolder=family.text_encoders[attribute], **hub_kwargs)
        self.text_dim = sum(e.config.hidden_size for a, e in self.text_encoders.items()
                            if a not in family.optional_text_encoders)  # width of the (CLIP) states
        self.scheduler = family.noise_scheduler(pretrained, **hub_kwargs)
        self.vae = self.denoiser = self.controlnets = self.image_encoders = None
        self.requires_grad_(False).eval()

    @property
    def unet(self) -> nn.Module | None:
        """The denoiser, under the name the UNet families' code (attention maps, IP-Adapters) uses."""
        return self.denoiser

    @property
    def text_encoder(self) -> nn.Module | None:
        """The (first) text encoder, or ``None`` once released."""
        return None if self.text_encoders is None else self.text_encoders['text_encoder']

    def _component(self, override: str | None, subfolder: str) -> tuple[str, dict]:
        """Where a component loads from: ``pretrained``'s subfolder, or the override: a model folder (or
        hub id) itself, or a whole pipeline folder's subfolder."""
        if not override:
            return self.pretrained, dict(subfolder=subfolder)
        local = Path(os.path.expanduser(str(override)))
        if local.is_dir() and not (local / 'config.json').is_file() and (local / subfolder).is_dir():
            return override, dict(subfolder=subfolder)
        return override, {}

    def _load_vae(self):
        from diffusers import AutoencoderKL
        path, kwargs = self._component(self.vae_path, 'vae')
        config = AutoencoderKL.load_config(path, **kwargs, **self.hub_kwargs)
        dtype = self.load_kwargs['dtype']
        if dtype == torch.float16 and config.get('force_upcast', False):
            print_log(f'the VAE of {path!r} overflows in fp16 (force_upcast): it runs in float32; give '
                      'vae=<an fp16-safe VAE> (e.g. madebyollin/sdxl-vae-fp16-fix) to run it in fp16', 'current')
            dtype = torch.float32
        return from_pretrained_or_explain(AutoencoderKL.from_pretrained, path, 'VAE',
                                          **kwargs, **dict(self.load_kwargs, dtype=dtype))

    def _load_denoiser(self):
        path, kwargs = self._component(self.unet_path, self.family.denoiser)
        if self.quantization is not None:
            kwargs['quantization_config'] = self.quantization
        return from_pretrained_or_explain(self.family.denoiser_model_class().from_pretrained, path, 'denoiser',
                                          **kwargs, **self.load_kwargs)

    def denoiser_config(self):
        """The denoiser's config (attribute access), read before the denoiser loads."""
        if self._denoiser_config is None:
            from diffusers.configuration_utils import FrozenDict
            path, kwargs = self._component(self.unet_path, self.family.denoiser)
            self._denoiser_config = FrozenDict(self.family.denoiser_model_class().load_config(
                path, **kwargs, **self.hub_kwargs))
        return self._denoiser_config

    def load_denoiser(self) -> None:
        """Load the VAE encoder and the denoiser."""
        self.vae = self._load_vae()
        self.vae.decoder = None  # features need the encoder only
        # channels_last: oneDNN/cuDNN convolutions skip their layout reorders at full image resolution
        # (CPU, 512x512: ~8% faster, bit-identical latents)
        to_channels_last(self.vae)
        use_inplace_resnets(self.vae.encoder)  # 3 instead of 4 full-resolution activations at a time
        self.denoiser = self._load_denoiser()
        self.family.check_denoiser(self.denoiser, self.text_dim,
                                   f' at {self.unet_path!r}' if self.unet_path else '')
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_multiple = self.family.latent_multiple(self.denoiser)
        self.requires_grad_(False).eval()

    def compile_static_parts(self, **compile_kwargs) -> None:
        """``torch.compile`` the modules that always run whole and unchanged: the VAE encoder and
        the ControlNets (compiled in place; state-dict keys and ``.to()`` are unaffected)."""
        self.vae.encoder.compile(**compile_kwargs)
        for net in (self.controlnets or {}).values():
            net.compile(**compile_kwargs)

    def train(self, mode: bool = True) -> 'FrozenStableDiffusion':
        return super().train(False)  # frozen parts stay in eval mode whatever the model does

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def pad_multiple(self) -> int:
        """Image sides must be multiples of this: the UNet's skip connections line up, a DiT's patches tile."""
        return self.vae_scale_factor * self.latent_multiple

    def seq_len(self, image_hw: tuple[int, int]) -> int:
        """Latent cells (UNet) or image tokens (DiT: patches) of a model input of ``image_hw`` pixels."""
        patch = self.latent_multiple if self.family.denoiser == 'transformer' else 1
        return image_seq_len(image_hw, self.vae_scale_factor, patch)

    def condition_kwargs(self, text: TextCondition, size: tuple[int, int]) -> dict:
        """The family's conditioning kwargs of the denoiser and its ControlNets for a batch of text
        conditions and a model input of ``size`` (before padding)."""
        options = {} if self.guidance is None else dict(guidance=self.guidance)
        return self.family.condition_kwargs(text, size, self.denoiser_config(), **options)

    def denoiser_input(self, latents: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The denoiser's input for latents ``[B, C, h, w]`` and the kwargs of their grid (FLUX: packed)."""
        return self.family.denoiser_input(latents)

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latents the denoiser takes."""
        return self.family.latent_channels(self.denoiser_config())

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> TextCondition:
        """The denoiser's text conditioning of ``prompt`` (as the family's pipeline does it, no CFG)."""
        if self.text_encoders is None:
            raise RuntimeError('the text encoder was released; build the backbone with keep_text_encoder=True '
                               'to encode prompts after construction')
        return self.family.encode_prompt(prompt, self.text_encoders, self.tokenizers, self.denoiser_config())

    def release_text_encoder(self) -> None:
        self.text_encoders = None
        gc.collect()

    @torch.no_grad()
    def encode_posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> the VAE posterior's mean and std as the denoiser's latents (``(z - shift)
        * scale``; SD3's VAE has a shift), in float32."""
        images = images.to(self.vae.dtype).contiguous(memory_format=torch.channels_last)
        dist = self.vae.encode(images).latent_dist
        scale, shift = self.vae.config.scaling_factor, self.vae.config.get('shift_factor')
        mean = dist.mean.float() if shift is None else dist.mean.float() - shift
        # the UNet runs faster in NCHW
        return (mean * scale).contiguous(), (dist.std.float() * scale).contiguous()

    def noise_level(self, timestep: int, image_hw: tuple[int, int]):
        """The family's noise level for GATE's ``timestep`` (DDPM: the timestep; flow matching: a sigma)."""
        return self.family.noise_level(self.scheduler, timestep, self.seq_len(image_hw))

    @torch.no_grad()
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor | None, level) -> torch.Tensor:
        """The family's noising at ``level`` computed in float32, cast to the frozen dtype after
        (``noise=None``: the clean latents, cast).

        Why float32: diffusers computes sqrt(alpha_bar_t) in the latents' dtype; in bf16 alpha_bar_50 =
        0.9516 becomes 0.9531, the noise level of t ~ 48.6. The noising is the same for epsilon- and
        v-prediction models (SD2.1-768): the prediction type only changes what the denoiser outputs.
        """
        if noise is None:
            return latents.to(self.dtype)
        return self.family.add_noise(self.scheduler, latents, noise, level).to(self.dtype)
