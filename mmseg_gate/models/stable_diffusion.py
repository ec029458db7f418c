"""The frozen Stable Diffusion stack: load once, encode once, run the UNet only as far as needed."""
from __future__ import annotations

import difflib
import gc
import itertools
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from mmengine.logging import print_log

from .families import TextCondition, detect_family
from .inference_blocks import use_inplace_resnets

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f'dtype={dtype!r} is not supported: use one of {sorted(DTYPES)} '
                         '(fp32 on CPU; bf16 or fp16 on GPU)')
    return DTYPES[dtype]


#: what the configs expect at their default paths (README: "Reproducing GATE"); SDXL's when the
#: path names it
_HUB_REPOS = {'Stable Diffusion model': 'stable-diffusion-v1-5/stable-diffusion-v1-5',
              'ControlNet': 'lllyasviel/sd-controlnet-canny'}
_HUB_REPOS_XL = {'Stable Diffusion model': 'stabilityai/stable-diffusion-xl-base-1.0',
                 'ControlNet': 'diffusers/controlnet-canny-sdxl-1.0'}


def _not_found(path: str, what: str) -> str:
    repo = (_HUB_REPOS_XL if 'xl' in Path(str(path)).name.lower() else _HUB_REPOS).get(what, '<repo>')
    return (f'{what} not found at {str(path)!r}. Download it (e.g. `hf download {repo} --local-dir {path}`; '
            'the README\'s "Reproducing GATE" lists the files to include) or point the config at the right '
            'folder (e.g. with --cfg-options); tiny test weights come from `python tools/make_tiny_sd.py`.')


def _is_repo_id(path: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(str(path))
    except HFValidationError:
        return False
    return not str(path).startswith(('.', '/', '~'))


def check_weights_location(path: str, what: str, subfolders: Sequence[str] = ()) -> None:
    """Fail before diffusers does, with a message that says what to download and where.

    A string that is no existing path but a valid hub id (``owner/name``) is left to
    ``from_pretrained`` (through :func:`from_pretrained_or_explain`, which turns a hub failure into
    the same message: ``checkpoints/stable-diffusion-v1-5`` is a valid hub id too).
    """
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        if _is_repo_id(path):
            return
        raise FileNotFoundError(_not_found(path, what))
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
    """Raised by the last tap's hook to stop the UNet forward early."""


def find_modules(model: nn.Module, names: Sequence[str], what: str = 'UNet') -> list[nn.Module]:
    """Look modules up by dotted name; an unknown name fails with the closest valid names."""
    modules = dict(model.named_modules())
    found = []
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.6)
            raise KeyError(f'tap {name!r} is not a module of the {what}; close matches: {close}. '
                           "SD1.5's GATE taps are 'up_blocks.{0,1,2}.upsamplers.0'.")
        found.append(modules[name])
    return found


def run_until_taps(model: nn.Module, tap_modules: Sequence[nn.Module], *args, **kwargs) -> list[torch.Tensor]:
    """Call ``model(*args, **kwargs)`` and return the outputs of ``tap_modules``.

    The forward stops right after the last of them has run, so nothing deeper is computed; the
    captured tensors are exactly those that forward hooks on a full forward would see.
    """
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def fn(module, inputs, output):
            captured[index] = output[0] if isinstance(output, (tuple, list)) else output
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
        raise RuntimeError('some taps never ran during the UNet forward; choose modules the forward calls')
    return [captured[i] for i in range(len(tap_modules))]


class FrozenStableDiffusion(nn.Module):
    """VAE encoder, UNet, noise scheduler and text encoding of one SD checkpoint, all frozen.

    The family (SD1/2 or SDXL, :mod:`.families`) is read from the folder. The text encoders are only
    needed for the prompts: :meth:`encode_prompt` runs them and :meth:`release_text_encoder` frees
    them once the prompts are cached.

    Args:
        pretrained: diffusers folder or hub id of the whole pipeline.
        dtype: dtype of the frozen parts; the VAE runs in float32 instead when it is fp16 and its
            config says ``force_upcast`` (SDXL's VAE overflows in fp16).
        vae: another VAE (folder or hub id, e.g. the fp16-fix SDXL VAE) instead of ``pretrained``'s.
        unet: another UNet (folder or hub id: a fine-tune such as CleanDIFT's, DreamBooth) with the
            VAE, text encoders and scheduler of ``pretrained``.
    """

    def __init__(self, pretrained: str, dtype: torch.dtype = torch.float32, vae: str | None = None,
                 unet: str | None = None, **hub_kwargs) -> None:
        super().__init__()
        from diffusers import DDPMScheduler
        from transformers import CLIPTokenizer
        check_weights_location(pretrained, 'Stable Diffusion model',
                               (() if unet else ('unet',)) + ('vae', 'text_encoder', 'tokenizer'))
        for path, what in ((vae, 'VAE'), (unet, 'UNet')):
            if path is not None:
                check_weights_location(path, what)
        # the first file to read: where a bad path or an offline hub shows
        self.family = from_pretrained_or_explain(detect_family, pretrained, 'Stable Diffusion model', **hub_kwargs)
        self.pretrained, self.vae_path, self.unet_path = pretrained, vae, unet
        self.hub_kwargs, self.load_kwargs = hub_kwargs, dict(dtype=dtype, **hub_kwargs)
        # text first: prompts are encoded and the encoders released before the large models load,
        # which keeps the build's peak memory at what the forward needs
        self.text_encoders = nn.ModuleDict()
        self.tokenizers = {}
        for attribute, tokenizer in self.family.text_encoders.items():
            self.text_encoders[attribute] = from_pretrained_or_explain(
                self.family.text_encoder_class(attribute).from_pretrained, pretrained, 'Stable Diffusion model',
                subfolder=attribute, **self.load_kwargs)
            self.tokenizers[attribute] = CLIPTokenizer.from_pretrained(pretrained, subfolder=tokenizer, **hub_kwargs)
        self.text_dim = sum(e.config.hidden_size for e in self.text_encoders.values())  # width of the states
        # add_noise only needs the betas; DDPM's formula is shared by SD's PNDM/DDIM/Euler configs
        self.scheduler = DDPMScheduler.from_pretrained(pretrained, subfolder='scheduler', **hub_kwargs)
        self.vae = self.unet = self.controlnets = self.image_encoders = None
        self.requires_grad_(False).eval()

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

    def _load_unet(self):
        from diffusers import UNet2DConditionModel
        path, kwargs = self._component(self.unet_path, 'unet')
        return from_pretrained_or_explain(UNet2DConditionModel.from_pretrained, path, 'UNet', **kwargs,
                                          **self.load_kwargs)

    def unet_config(self):
        """The UNet's config (attribute access), read before the UNet loads."""
        from diffusers import UNet2DConditionModel
        from diffusers.configuration_utils import FrozenDict
        path, kwargs = self._component(self.unet_path, 'unet')
        return FrozenDict(UNet2DConditionModel.load_config(path, **kwargs, **self.hub_kwargs))

    def load_denoiser(self) -> None:
        """Load the VAE encoder and the UNet."""
        self.vae = self._load_vae()
        self.vae.decoder = None  # features need the encoder only
        # channels_last: oneDNN/cuDNN convolutions skip their layout reorders at full image resolution
        # (CPU, 512x512: ~8% faster, bit-identical latents). Every tensor is copied, not only the
        # converted ones: a tensor left in the safetensors file mapping keeps the whole mapping, and
        # with it the pages of the converted weights, resident (~130 MB for SD's VAE encoder).
        for t in itertools.chain(self.vae.parameters(), self.vae.buffers()):
            t.data = t.data.clone(memory_format=torch.channels_last if t.ndim == 4 else torch.contiguous_format)
        use_inplace_resnets(self.vae.encoder)  # 3 instead of 4 full-resolution activations at a time
        self.unet = self._load_unet()
        cross = self.unet.config.cross_attention_dim
        text_dim = self.text_dim
        if cross != text_dim:
            raise ValueError(f'the UNet{" at " + repr(self.unet_path) if self.unet_path else ""} expects text '
                             f'states of width {cross}, the text encoders of {self.pretrained!r} give {text_dim}: '
                             'use a UNet made for this base model')
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_scale_factor = 2 ** (len(self.unet.config.down_block_types) - 1)
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
        return self.unet.dtype

    @property
    def pad_multiple(self) -> int:
        """Image sides must be multiples of this for the UNet's skip connections to line up."""
        return self.vae_scale_factor * self.unet_scale_factor

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> TextCondition:
        """The UNet's text conditioning of ``prompt`` (as the family's pipeline does it, no CFG)."""
        if self.text_encoders is None:
            raise RuntimeError('the text encoder was released; build the backbone with keep_text_encoder=True '
                               'to encode prompts after construction')
        return self.family.encode_prompt(prompt, self.text_encoders, self.tokenizers)

    def release_text_encoder(self) -> None:
        self.text_encoders = None
        gc.collect()

    @torch.no_grad()
    def encode_posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] -> the VAE posterior's mean and std, scaled as SD's latents, in float32."""
        images = images.to(self.vae.dtype).contiguous(memory_format=torch.channels_last)
        dist = self.vae.encode(images).latent_dist
        scale = self.vae.config.scaling_factor
        # the UNet runs faster in NCHW
        return (dist.mean.float() * scale).contiguous(), (dist.std.float() * scale).contiguous()

    @torch.no_grad()
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor | None, timestep: int) -> torch.Tensor:
        """``scheduler.add_noise`` computed in float32, cast to the frozen dtype after (``noise=None``:
        the clean latents, cast).

        Why: diffusers computes sqrt(alpha_bar_t) in the latents' dtype; in bf16 alpha_bar_50 = 0.9516
        becomes 0.9531, the noise level of t ~ 48.6. The noising is the same for epsilon- and
        v-prediction models (SD2.1-768): the prediction type only changes what the UNet outputs.
        """
        if noise is None:
            return latents.to(self.dtype)
        t = torch.full((latents.shape[0],), timestep, dtype=torch.long, device=latents.device)
        return self.scheduler.add_noise(latents.float(), noise.float(), t).to(self.dtype)
