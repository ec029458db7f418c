"""What every model family says about itself: the interface generic code relies on.

Generic code (the frozen stack, the backbone, the noise policy, taps, batching) speaks of *the
denoiser* and asks the family everything that differs between Stable Diffusion 1/2, SDXL, SD3 and
PixArt (and later FLUX, Sana, ...): which folders it is, which text encoders it has and how a prompt
becomes conditioning, which denoiser class loads and how it is called, how latents are noised and
what a timestep means, and what a tapped module's output is. A new family is one subclass.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from ..flow_matching import flow_noise

#: a tap name's enclosing block (``transformer_blocks.3.attn`` -> ``transformer_blocks.3``)
_BLOCK = re.compile(r'^(\w*blocks\.\d+)\.')


@dataclass
class TextCondition:
    """One prompt's conditioning, batch first: ``hidden`` ``[B, N, D]`` states; ``pooled`` ``[B, P]``
    (SDXL, SD3); ``mask`` ``[B, N]`` of the text tokens (PixArt's T5)."""
    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def _map(self, fn) -> 'TextCondition':
        return replace(self, **{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                                for f in fields(self)})

    def expand(self, batch: int) -> 'TextCondition':
        return self._map(lambda t: t.expand(batch, *t.shape[1:]))

    def to(self, *args, **kwargs) -> 'TextCondition':
        """Moves every part; a dtype applies to the floating parts only (a mask stays integer)."""
        return self._map(lambda t: t.to(*args, **kwargs) if t.is_floating_point()
                         else t.to(*[a for a in args if not isinstance(a, torch.dtype)],
                                   **{k: v for k, v in kwargs.items() if k != 'dtype'}))

    @staticmethod
    def cat(conditions: list['TextCondition']) -> 'TextCondition':
        first = conditions[0]
        return TextCondition(**{f.name: None if getattr(first, f.name) is None
                                else torch.cat([getattr(c, f.name) for c in conditions]) for f in fields(first)})


def first_output(module: nn.Module, output):
    """A module's output, or the first of the tensors it returns (what UNet taps mean)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class DenoiserFamily:
    """A model family. Class attributes describe the folder; methods do what differs.

    Attributes:
        name: short name (checkpoint provenance, logs).
        pipeline_classes: diffusers pipeline classes whose ``model_index.json`` means this family; the
            first is the one whose pieces (prompt encoding, LoRA loaders) are reproduced.
        denoiser: subfolder and pipeline attribute of the denoiser (``unet`` or ``transformer``).
        denoiser_class: its diffusers class name.
        text_encoders: text encoder attribute -> tokenizer subfolder, in the pipeline's order.
        optional_text_encoders: encoders a folder may lack (SD3's T5), or a user may drop.
        flow_matching: latents are noised as ``(1 - sigma) x + sigma n`` (else DDPM's ``add_noise``).
    """
    name = ''
    pipeline_classes: tuple[str, ...] = ()
    denoiser = 'unet'
    denoiser_class = 'UNet2DConditionModel'
    controlnet_class = 'ControlNetModel'
    text_encoders: dict[str, str] = {}
    optional_text_encoders: tuple[str, ...] = ()
    flow_matching = False
    #: text encoders the family's LoRA loaders read layers for (None: all of them)
    lora_text_encoders_only: tuple[str, ...] | None = None
    #: transformer blocks' feed-forwards may be chunked along the tokens (inference_blocks.chunk_feed_forward)
    chunkable_feed_forwards = True
    #: kinds of denoiser LoRA keys its loaders read (:func:`mmseg_gate.lora.files.lora_key_kinds`)
    lora_kinds: tuple[str, ...] = ('unet',)
    #: classes of the blocks whose outputs ``token_norm='adaln'`` modulates (:meth:`block_modulation`)
    adaln_blocks: tuple[str, ...] = ()
    #: classes ``compile_denoiser`` compiles where the diffusers class names none (its ``_repeated_blocks``)
    repeated_blocks: tuple[str, ...] = ()

    # ------------------------------------------------------------------ folders
    def matches(self, components: dict) -> bool:
        """Whether a ``model_index.json`` (its dict; for a folder without one, the subfolders present
        as keys) is a pipeline of this family."""
        return components.get('_class_name') in self.pipeline_classes

    @property
    def pipeline_class(self) -> str:
        return self.pipeline_classes[0]

    def pipeline(self):
        """The diffusers pipeline class of this family (prompt encoding, LoRA loaders)."""
        import diffusers
        return getattr(diffusers, self.pipeline_class)

    def lora_pipeline(self):
        return self.pipeline()

    @property
    def lora_text_encoders(self) -> tuple[str, ...]:
        return tuple(self.text_encoders) if self.lora_text_encoders_only is None else self.lora_text_encoders_only

    # ------------------------------------------------------------------ text
    def text_encoder_class(self, attribute: str):
        raise NotImplementedError

    def tokenizer_class(self, attribute: str):
        from transformers import AutoTokenizer
        return AutoTokenizer

    def encode_prompt(self, prompt: str, encoders: dict, tokenizers: dict, config=None) -> TextCondition:
        """As the family's pipeline encodes ``prompt`` without guidance; ``config``: the denoiser's."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the denoiser
    def denoiser_model_class(self):
        import diffusers
        return getattr(diffusers, self.denoiser_class)

    def check_denoiser(self, denoiser: nn.Module, text_dim: int, where: str) -> None:
        """Fail at build time when the denoiser does not fit the text encoders."""

    def latent_multiple(self, denoiser: nn.Module) -> int:
        """Latent sides must be multiples of this (UNet: its down-sampling; DiT: its patch size)."""
        raise NotImplementedError

    def latent_channels(self, config) -> int:
        """Channels of the VAE latents the denoiser takes (``config``: the denoiser's)."""
        return int(config['in_channels'])

    def denoiser_input(self, latents: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The denoiser's (and its ControlNets') input for latents ``[B, C, h, w]`` and the kwargs that depend
        on their grid (FLUX: packed tokens and their position ids)."""
        return latents, {}

    def check_options(self, config, guidance: float | None) -> None:
        """Fail at build time for options this denoiser (``config``) does not have."""
        if guidance is not None:
            raise ValueError(f'guidance={guidance} is for guidance-distilled denoisers (FLUX.1-dev); the {self.name} '
                             'family has none: remove guidance from the backbone config')

    def condition_kwargs(self, text: TextCondition, size: tuple[int, int], config=None) -> dict:
        """The denoiser's (and its ControlNets') conditioning kwargs for a batch of text conditions and
        an input of ``size`` (the model input's size before padding, in pixels); ``config``: the
        denoiser's."""
        raise NotImplementedError

    def image_output(self, module: nn.Module, output):
        """The image part of a tapped module's output (a tensor), as a forward hook sees it."""
        return first_output(module, output)

    # ------------------------------------------------------------------ ControlNets
    def controlnet_model_class(self):
        import diffusers
        return getattr(diffusers, self.controlnet_class)

    def prepare_controlnet(self, net: nn.Module, denoiser: nn.Module, path: str) -> None:
        """Check (and complete) a loaded ControlNet against the denoiser it steers."""

    def control_input(self, sd, condition: torch.Tensor, net: nn.Module) -> torch.Tensor:
        """What the ControlNet gets as ``controlnet_cond`` for a control image in [0, 1] (UNets: the image)."""
        return condition.to(sd.dtype)

    def check_control_mode(self, net: nn.Module, mode: int | None, path: str) -> None:
        """Fail at build time when a ControlNet's ``mode`` does not fit it (only union ControlNets have modes)."""
        if mode is not None:
            raise ValueError(f'ControlNet {path!r} has one control type: remove mode={mode} from the branch\'s '
                             'controlnet (modes are for union ControlNets)')

    def controlnet_kwargs(self, net: nn.Module, kwargs: dict, mode: int | None = None) -> dict:
        """The ControlNet's conditioning kwargs, from the denoiser's (``mode``: a union ControlNet's)."""
        return kwargs

    def split_residuals(self, output, net: nn.Module, denoiser: nn.Module) -> tuple:
        """A ControlNet's output as ``(per-block residuals, middle residual or None)``."""
        down, mid = output
        return list(down), mid

    def residual_kwargs(self, denoiser: nn.Module, down, mid) -> dict:
        """The denoiser kwargs that add the (summed, batched) ControlNet residuals."""
        return dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)

    def tap_select(self, denoiser: nn.Module, down):
        """``select(module, output)`` for the taps of one pass with ControlNet residuals ``down`` (or None)."""
        return self.image_output

    # ------------------------------------------------------------------ LoRA
    def read_lora(self, path: str, unet_config=None) -> tuple[dict, dict | None, dict | None]:
        """``(state_dict, network alphas or None, metadata)`` of a LoRA file in diffusers' format (the family's
        loader converts kohya/LyCORIS/XLabs files)."""
        return self.lora_pipeline().lora_state_dict(path, unet_config=unet_config, return_lora_metadata=True)

    def load_transformer_lora(self, state_dict: dict, alphas, model: nn.Module, adapter_name: str, metadata) -> None:
        """Load ``state_dict``'s transformer layers into ``model`` as the peft adapter ``adapter_name``."""
        self.lora_pipeline().load_lora_into_transformer(state_dict, transformer=model, adapter_name=adapter_name,
                                                        metadata=metadata)

    # ------------------------------------------------------------------ noise
    def noise_scheduler(self, pretrained: str, **hub_kwargs):
        """The scheduler whose noising (and timestep meaning) the features use: flow matching's, or DDPM's."""
        if self.flow_matching:
            from diffusers import FlowMatchEulerDiscreteScheduler
            return FlowMatchEulerDiscreteScheduler.from_pretrained(pretrained, subfolder='scheduler', **hub_kwargs)
        from diffusers import DDPMScheduler
        # add_noise only needs the betas; DDPM's formula is shared by SD's PNDM/DDIM/Euler configs
        return DDPMScheduler.from_pretrained(pretrained, subfolder='scheduler', **hub_kwargs)

    def noise_level(self, scheduler, timestep: int, seq_len: int | None = None):
        """What :meth:`add_noise` takes for GATE's ``timestep`` (DDPM: the timestep itself); ``seq_len``:
        the input's image tokens (for resolution-dependent schedules)."""
        return int(timestep)

    def model_timestep(self, level) -> float | int:
        """The timestep value the denoiser is given at noise ``level``."""
        return level

    def add_noise(self, scheduler, latents: torch.Tensor, noise: torch.Tensor, level) -> torch.Tensor:
        """Flow matching: ``(1 - sigma) x + sigma n`` at sigma ``level``; DDPM: ``scheduler.add_noise`` at timestep
        ``level``. Both in float32 (diffusers computes sqrt(alpha_bar_t) in the latents' dtype: in bf16
        alpha_bar_50 = 0.9516 becomes 0.9531)."""
        if self.flow_matching:
            return flow_noise(latents, noise, float(level))
        t = torch.full((latents.shape[0],), level, dtype=torch.long, device=latents.device)
        return scheduler.add_noise(latents.float(), noise.float(), t)

    # ------------------------------------------------------------------ AdaLN (massive activations)
    def is_adaln_block(self, module: nn.Module) -> bool:
        """Whether :meth:`block_modulation` can normalise ``module``'s output (an AdaLN-modulated block)."""
        return type(module).__name__ in self.adaln_blocks

    def check_token_norm_taps(self, taps: dict[str, nn.Module]) -> None:
        """Fail at build time for ``token_norm='adaln'`` on taps (name -> module) that are no AdaLN-modulated
        block: their outputs have no modulation of their own (an attention or feed-forward inside a block)."""
        bad = {name: type(m).__name__ for name, m in taps.items() if not self.is_adaln_block(m)}
        if not bad:
            return
        if not self.adaln_blocks:
            raise ValueError(f"token_norm='adaln' needs AdaLN-modulated transformer blocks; the {self.name} family's "
                             'denoiser has none: leave token_norm=None')
        blocks = sorted({m.group(1) for m in map(_BLOCK.match, bad) if m})
        raise ValueError(f"token_norm='adaln' on taps {bad} (name: class): it modulates the output of the {self.name} "
                         f"family's AdaLN blocks ({', '.join(self.adaln_blocks)}); tap the block itself"
                         + (f' (e.g. {blocks})' if blocks else '') + ' or leave token_norm=None')

    def block_modulation(self, block: nn.Module, tokens: torch.Tensor, block_kwargs: dict) -> torch.Tensor:
        """LayerNorm without affine of a block's output tokens, then the block's own AdaLN modulation
        ``(1 + scale) x + shift`` under its conditioning (``block_kwargs``: what the block was called
        with). Only for the blocks :meth:`is_adaln_block` accepts (:meth:`check_token_norm_taps` refuses others)."""
        raise NotImplementedError(f'the {self.name} family has no AdaLN-modulated blocks')


def token_ids(tokenizer, prompt: str, encoder: nn.Module, max_length: int | None = None) -> torch.Tensor:
    """Padded, truncated input ids of ``prompt`` on the encoder's device."""
    ids = tokenizer(prompt, padding='max_length', max_length=max_length or tokenizer.model_max_length,
                    truncation=True, return_tensors='pt').input_ids
    return ids.to(next(encoder.parameters()).device)


__all__ = ['TextCondition', 'DenoiserFamily', 'first_output', 'token_ids']
