"""Denoising before extraction (the authors' ``denoising_from``): img2img steps, then the features.

A branch with ``denoising_from=60`` noises the latents to 60 (instead of its timestep), runs the
scheduler's steps down to its extraction timestep with its own conditioning (prompt, LoRA,
ControlNet: full UNet passes), and is extracted there. The schedule is the authors': img2img
timesteps of a 1000-step schedule when the span is at most 50, of a 100-step one otherwise, cut at
the first timestep not above the extraction timestep, which is where the features are taken.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .controlnets import BranchInput


@dataclass(frozen=True)
class DenoisingPlan:
    """One branch's steps: ``steps`` (the UNet passes, descending) then extraction at ``extract``."""
    requested: int  # the configured denoising_from
    steps: tuple[int, ...]
    extract: int
    steps_per_schedule: int
    begin_index: int

    @property
    def start(self) -> int:
        return self.steps[0] if self.steps else self.extract


def load_scheduler(pretrained: str, name: str | None = None, **hub_kwargs):
    """The SD folder's scheduler, or the diffusers scheduler class ``name`` with its configuration."""
    import diffusers
    config = diffusers.DDPMScheduler.load_config(pretrained, subfolder='scheduler', **hub_kwargs)  # any scheduler's
    name = name or config['_class_name']
    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, 'step'):
        raise ValueError(f'denoising scheduler {name!r} is not a diffusers scheduler (e.g. DDIMScheduler, '
                         'PNDMScheduler, EulerDiscreteScheduler)')
    return cls.from_config(config)


def plan_denoising(scheduler, start: int, stop: int) -> DenoisingPlan:
    """The steps from ``start`` down to the extraction timestep (the first scheduled one >= ``stop``)."""
    if start <= stop:
        raise ValueError(f'denoising_from={start} must be above the extraction timestep {stop}')
    steps = 1000 if start - stop <= 50 else 100
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(steps)
    # img2img's get_timesteps with strength start / 1000 (the authors divide by the step count,
    # which starts the 100-step case ten times higher: a slip we do not repeat)
    t_start = max(steps - min(int(steps * start / scheduler.config.num_train_timesteps), steps), 0)
    begin = t_start * scheduler.order
    timesteps = [int(t) for t in scheduler.timesteps[begin:] if int(t) >= stop]
    if not timesteps:
        raise ValueError(f'no scheduled timestep between denoising_from={start} and {stop}')
    return DenoisingPlan(start, tuple(timesteps[:-1]), timesteps[-1], steps, begin)


def plan_branches(sd, specs, timesteps: list[int], default_start: int | None, scheduler: str | None,
                  noise_mode: str):
    """``(denoiser or None, per branch its plan or None, per branch its extraction timestep)``."""
    starts = [default_start if s.denoising_from is None else s.denoising_from for s in specs]
    if all(start is None for start in starts):
        return None, [None] * len(specs), timesteps
    if noise_mode == 'none':
        raise ValueError("denoising_from denoises noisy latents: it cannot be combined with noise='none'")
    denoiser = Denoiser(load_scheduler(sd.pretrained, scheduler, **sd.hub_kwargs))
    plans = [None if start is None else plan_denoising(denoiser.scheduler, start, t)
             for start, t in zip(starts, timesteps)]
    return denoiser, plans, [t if plan is None else plan.extract for t, plan in zip(timesteps, plans)]


class Denoiser:
    """Runs the plans of branches that share one (same steps: one batched loop)."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    def fresh(self, plan: DenoisingPlan):
        """A scheduler positioned at the plan's first step (schedulers keep state while stepping)."""
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(plan.steps_per_schedule)
        if hasattr(scheduler, 'set_begin_index'):
            scheduler.set_begin_index(plan.begin_index)
        return scheduler

    def add_noise(self, plan: DenoisingPlan, latents: torch.Tensor, noise: torch.Tensor, dtype: torch.dtype):
        """The scheduler's own noising at the plan's start (its latent space: x + sigma n for Euler)."""
        t = torch.full((latents.shape[0],), plan.start, dtype=torch.long, device=latents.device)
        return self.fresh(plan).add_noise(latents.float(), noise.float(), t).to(dtype)

    def noise_adder(self, sd) -> Callable:
        """``add_noise(latents, noise, level)`` for the noise policy: a timestep gets SD's fp32 noising,
        a plan its scheduler's noising at the plan's start."""
        def add_noise(latents, noise, level):
            if isinstance(level, DenoisingPlan):
                return self.add_noise(level, latents, noise, sd.dtype)
            return sd.add_noise(latents, noise, level)
        return add_noise

    def run_branches(self, plans: Sequence, groups: Sequence[Sequence[int]], inputs: list[BranchInput],
                     predict: Callable) -> None:
        """Denoise the branches that have a plan, one batched loop per UNet group and plan;
        ``predict(members, step_inputs)`` runs one step's ControlNets and full UNet. Their inputs then
        hold the latents at the extraction timestep."""
        b = inputs[0].noisy.shape[0]
        for group in groups:
            by_plan: dict = {}
            for i in group:
                if plans[i] is not None:
                    by_plan.setdefault(plans[i], []).append(i)
            for plan, members in by_plan.items():
                def step(model_input, t, members=members):
                    return predict(members, [BranchInput(x, torch.full((b,), t, device=x.device), inputs[i].text,
                                                         (id(x), t, inputs[i].key[2]), inputs[i].image_embeds)
                                             for x, i in zip(model_input.split(b), members)])
                latents = self.run(plan, torch.cat([inputs[i].noisy for i in members]), step)
                for i, x in zip(members, latents.split(b)):
                    inputs[i].noisy, inputs[i].key = x, (id(x), plan.extract, inputs[i].key[2])

    @torch.no_grad()
    def run(self, plan: DenoisingPlan, latents: torch.Tensor, predict) -> torch.Tensor:
        """``predict(model_input, t)`` -> the UNet's prediction for each step; returns the UNet input
        at the extraction timestep (scaled as the scheduler scales model inputs)."""
        scheduler = self.fresh(plan)
        for t in plan.steps:
            prediction = predict(scheduler.scale_model_input(latents, t), t)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0].to(latents.dtype)
        return scheduler.scale_model_input(latents, plan.extract)


__all__ = ['DenoisingPlan', 'load_scheduler', 'plan_denoising', 'plan_branches', 'Denoiser']
