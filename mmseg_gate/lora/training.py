"""Train GATE's LoRA adapters with mmengine: the standard denoising loss on a few dataset images.

The paper's adapters are LyCORIS LoCon (kohya sd-scripts): attention, feed-forward and projection
linears at rank 64 / alpha 32, the resnets' 3x3 convolutions at rank 32, trained on ~30 images of
the target dataset with three caption styles. :class:`StableDiffusionLoRA` is that as an mmengine
model: the Runner gives logging, checkpoints, ``--resume``, AMP and DDP; :class:`SaveLoRAHook`
writes the adapter as a LoRA file the backbone loads, at every checkpoint and at the end.
"""
from __future__ import annotations

import os.path as osp
from typing import Sequence

import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import BaseModel, is_model_wrapper
from mmseg.registry import HOOKS, MODELS
from torch import nn

from gate_features.frozen_stack import check_weights_location, from_pretrained_or_explain
from .files import save_lora

#: LoCon's UNet targets: transformer linears (rank) and resnet convolutions (conv rank)
LINEAR_TARGETS = ('to_q', 'to_k', 'to_v', 'to_out.0', 'ff.net.0.proj', 'ff.net.2', 'proj_in', 'proj_out')
CONV_TARGETS = ('conv1', 'conv2')
TEXT_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'out_proj', 'fc1', 'fc2')
ADAPTER = 'default'


def _targets(model: nn.Module, suffixes: Sequence[str], types: tuple) -> list[str]:
    return [n for n, m in model.named_modules() if n.endswith(tuple(suffixes)) and isinstance(m, types)]


@MODELS.register_module()
class StableDiffusionLoRA(BaseModel):
    """A frozen Stable Diffusion model with trainable LoCon-shaped peft LoRA layers.

    ``forward(inputs, data_samples, mode='loss')``: images in [-1, 1] (``SegDataPreProcessor`` with
    mean=std=127.5) are encoded (posterior sample), noised at random timesteps and denoised with the
    prompt of each sample (``data_samples[i].caption``, ``''`` without one); the loss is the MSE to
    the scheduler's target (epsilon or v).

    Only the LoRA layers are registered parameters: the optimizer, ``state_dict()`` and checkpoints
    hold them alone.

    Args:
        pretrained: diffusers folder (or hub id) of the base model.
        rank, alpha: of the linear layers (paper: 64, 32).
        conv_rank, conv_alpha: of the resnets' 3x3 convolutions (paper: conv dim 32; alpha 16 =
            half the rank, the authors' rule for alphas).
        text_encoder: also train LoRA layers in the text encoder (rank/alpha as the linears).
        dtype: of the frozen weights ('fp32'; 'fp16'/'bf16' on GPU); LoRA layers train in fp32.
    """

    def __init__(self, pretrained: str, rank: int = 64, alpha: float = 32, conv_rank: int = 32,
                 conv_alpha: float = 16, text_encoder: bool = False, dtype: str = 'fp32',
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from peft import LoraConfig
        from transformers import CLIPTextModel, CLIPTokenizer
        from gate_features.frozen_stack import resolve_dtype
        check_weights_location(pretrained, 'Stable Diffusion model', ('unet', 'vae', 'text_encoder', 'tokenizer'))
        torch_dtype = resolve_dtype(dtype)
        text = from_pretrained_or_explain(CLIPTextModel.from_pretrained, pretrained, 'Stable Diffusion model',
                                          subfolder='text_encoder', dtype=torch_dtype)
        frozen = nn.ModuleDict(dict(
            unet=UNet2DConditionModel.from_pretrained(pretrained, subfolder='unet', dtype=torch_dtype),
            vae=AutoencoderKL.from_pretrained(pretrained, subfolder='vae', dtype=torch_dtype),
            text_encoder=text)).requires_grad_(False).eval()
        frozen.vae.decoder = None  # the loss needs the encoder only
        self.tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder='tokenizer')
        self.scheduler = DDPMScheduler.from_pretrained(pretrained, subfolder='scheduler')
        self.pretrained = pretrained

        unet = frozen.unet
        linears = _targets(unet, LINEAR_TARGETS, (nn.Linear, nn.Conv2d))
        convs = _targets(unet, CONV_TARGETS, (nn.Conv2d,))
        self.unet_config = LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=linears + convs, init_lora_weights='gaussian',
            rank_pattern={n: conv_rank for n in convs}, alpha_pattern={n: conv_alpha for n in convs})
        unet.add_adapter(self.unet_config, adapter_name=ADAPTER)
        self.train_text_encoder = text_encoder
        if text_encoder:
            text.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights='gaussian',
                                        target_modules=_targets(text, TEXT_TARGETS, (nn.Linear,))),
                             adapter_name=ADAPTER)
        # Not registered: the frozen weights stay out of parameters(), state_dict() and DDP ...
        object.__setattr__(self, 'frozen', frozen)
        # ... while the LoRA layers are registered (the same modules, shared with the frozen models)
        lora = {'unet': self._lora_modules(unet), 'text_encoder': self._lora_modules(text)}
        self.lora = nn.ModuleDict({model: layers for model, layers in lora.items() if len(layers)})
        for p in self.lora.parameters():
            p.data = p.data.float()
            p.requires_grad_(True)
        self._prompt_cache: dict[str, torch.Tensor] = {}

    @staticmethod
    def _lora_modules(model: nn.Module) -> nn.ModuleDict:
        from peft.tuners.lora import LoraLayer
        out = nn.ModuleDict()
        for name, m in model.named_modules():
            if isinstance(m, LoraLayer):
                out[name.replace('.', '|')] = nn.ModuleList([m.lora_A[ADAPTER], m.lora_B[ADAPTER]])
        return out

    # ----------------------------------------------------------------- nn.Module plumbing
    def _apply(self, fn, recurse: bool = True):
        self.frozen._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()  # dropout-free frozen parts; the LoRA layers have no mode-dependent layers
        return self

    # ----------------------------------------------------------------- LoRA file
    def lora_layers(self) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]]:
        """Per model ``{module name: (lora_A weight, lora_B weight, alpha)}`` for :func:`save_lora`."""
        from peft.tuners.lora import LoraLayer
        out = {}
        for model in ('unet', 'text_encoder'):
            layers = {}
            for name, m in self.frozen[model].named_modules():
                if isinstance(m, LoraLayer) and ADAPTER in m.lora_A:
                    r = m.r[ADAPTER]
                    layers[name] = (m.lora_A[ADAPTER].weight.detach().float().cpu(),
                                    m.lora_B[ADAPTER].weight.detach().float().cpu(),
                                    float(m.scaling[ADAPTER] * r))
            out[model] = layers
        return out

    def save_lora(self, path: str) -> str:
        save_lora(path, self.lora_layers())
        return path

    # ----------------------------------------------------------------- loss
    def _embed(self, prompts: Sequence[str], device: torch.device) -> torch.Tensor:
        text = self.frozen.text_encoder
        if self.train_text_encoder:  # trainable: no cache, gradients flow
            ids = self.tokenizer(list(prompts), padding='max_length', truncation=True, return_tensors='pt',
                                 max_length=self.tokenizer.model_max_length).input_ids.to(device)
            return text(ids)[0]
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            with torch.no_grad():
                ids = self.tokenizer(missing, padding='max_length', truncation=True, return_tensors='pt',
                                     max_length=self.tokenizer.model_max_length).input_ids.to(device)
                for p, e in zip(missing, text(ids)[0]):
                    self._prompt_cache[p] = e
            while len(self._prompt_cache) > 4096:  # bounded
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
        return torch.stack([self._prompt_cache[p].to(device) for p in prompts])

    def loss(self, inputs: torch.Tensor, data_samples: Sequence | None) -> dict[str, torch.Tensor]:
        unet, vae = self.frozen.unet, self.frozen.vae
        dtype = unet.dtype
        b = inputs.shape[0]
        prompts = [(getattr(s, 'caption', None) or '') if s is not None else '' for s in (data_samples or [None] * b)]
        # posterior sample, noise and timesteps: torch's global generator of the device (RandomStateHook
        # saves and restores it with checkpoints); no private generator
        with torch.no_grad():
            latents = vae.encode(inputs.to(dtype)).latent_dist.sample().float() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), device=latents.device)
            noisy = self.scheduler.add_noise(latents, noise, t)
            if self.scheduler.config.prediction_type == 'v_prediction':
                target = self.scheduler.get_velocity(latents, noise, t)
            else:
                target = noise
        emb = self._embed(prompts, inputs.device).to(dtype)
        pred = unet(noisy.to(dtype), t, encoder_hidden_states=emb).sample
        return dict(loss_denoise=F.mse_loss(pred.float(), target))

    def forward(self, inputs: torch.Tensor, data_samples: Sequence | None = None, mode: str = 'loss'):
        if mode != 'loss':
            raise ValueError(f"StableDiffusionLoRA only trains (mode='loss'), got mode={mode!r}; "
                             'use the written LoRA file in a GATEDiffusionBackbone branch')
        return self.loss(inputs, data_samples)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class SaveLoRAHook(Hook):
    """Writes the adapter as ``<work_dir>/<name>_iter_<N>.safetensors`` with every checkpoint and
    ``<work_dir>/<name>.safetensors`` at the end of training (rank 0 only).

    With ``random_state=True`` it also registers a :class:`~mmseg_gate.engine.random_state.RandomStateHook`
    (unless the runner has one): the posterior samples, noise and timesteps of the loss come from
    torch's global generators, whose state checkpoints then carry, so ``--resume`` continues exactly.
    """

    priority = 'LOW'

    def __init__(self, name: str = 'lora', random_state: bool = True) -> None:
        self.name = name
        self.random_state = random_state

    def before_run(self, runner) -> None:
        if self.random_state:
            from ..engine.random_state import ensure_random_state_hook
            ensure_random_state_hook(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        iteration = checkpoint.get('meta', {}).get('iter', runner.iter)  # the checkpoint's name: iter_<N>.pth
        self._write(runner, f'{self.name}_iter_{iteration}.safetensors')

    def after_train(self, runner) -> None:
        path = self._write(runner, f'{self.name}.safetensors')
        runner.logger.info(f'LoRA written to {path}: use it as loras=[dict(path={path!r})] in a GATE branch')

    def _write(self, runner, filename: str) -> str:
        from mmengine.dist import is_main_process
        path = osp.join(runner.work_dir, filename)
        if is_main_process():
            _unwrap(runner.model).save_lora(path)
        return path


__all__ = ['StableDiffusionLoRA', 'SaveLoRAHook']
