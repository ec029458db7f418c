"""Denoising before extraction (the authors' ``denoising_from``): img2img steps, then the features.

A branch with ``denoising_from=F`` runs diffusers' img2img with strength ``F / 1000`` on a schedule
of 1000 steps when ``F`` minus the extraction timestep is at most 50, of 100 steps otherwise: the
latents are noised (the scheduler's own ``add_noise``) to the first timestep of the schedule from
index ``(steps - int(steps * F / 1000)) * scheduler.order`` (``get_timesteps``), which need not be
``F`` (PNDM from 60 starts at 61, since its warm-up repeats a timestep; DDIM from 150 at 141); the
scheduler then steps (full UNet passes with the branch's prompt, LoRA, ControlNet) through its
timesteps down to the first scheduled timestep not below the extraction timestep, and the features
are taken there: that timestep replaces the configured one, also as the UNet's timestep input
(``timestep=55, denoising_from=200`` with PNDM: extracted at 61; a warning at build time names both).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from .log import print_log

from .controlnets import BranchInput


@dataclass(frozen=True)
class DenoisingPlan:
    """One branch's steps: ``steps`` (the UNet passes, descending: the scheduler's timesteps from
    ``begin_index`` on) then extraction at ``extract``, the first scheduled timestep not below the
    configured one. Timesteps are the scheduler's values (ints where they are integral)."""
    requested: int  # the configured denoising_from
    steps: tuple[int | float, ...]
    extract: int | float
    steps_per_schedule: int
    begin_index: int

    @property
    def start(self) -> int | float:
        """The timestep the latents are noised to (img2img's first one, not ``requested``)."""
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


def _value(t: torch.Tensor) -> int | float:
    """A scheduler timestep as a Python number: int when integral (PNDM/DDIM, Euler 'leading')."""
    v = t.item()
    return int(v) if float(v).is_integer() else v


def plan_denoising(scheduler, start: int, stop: int) -> DenoisingPlan:
    """img2img's steps for strength ``start / 1000`` down to the extraction timestep: the first
    scheduled one not below ``stop`` (``stop`` itself only if the schedule has it)."""
    if start <= stop:
        raise ValueError(f'denoising_from={start} must be above the extraction timestep {stop}')
    steps = 1000 if start - stop <= 50 else 100
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(steps)
    # img2img's get_timesteps with strength start / 1000 (the authors divide by the step count,
    # which starts the 100-step case ten times higher: a slip we do not repeat)
    t_start = max(steps - min(int(steps * start / scheduler.config.num_train_timesteps), steps), 0)
    begin = t_start * scheduler.order
    timesteps = [v for v in map(_value, scheduler.timesteps[begin:]) if v >= stop]
    if not timesteps:
        raise ValueError(f'no scheduled timestep between denoising_from={start} and {stop}')
    return DenoisingPlan(start, tuple(timesteps[:-1]), timesteps[-1], steps, begin)


def plan_branches(sd, specs, timesteps: list[int], default_start: int | None, scheduler: str | None,
                  noise_mode: str):
    """``(denoiser or None, per branch its plan or None, per branch its extraction timestep)``.

    Logs one warning at build time when an extraction timestep is not on its schedule and moves.
    """
    starts = [default_start if s.denoising_from is None else s.denoising_from for s in specs]
    if all(start is None for start in starts):
        return None, [None] * len(specs), timesteps
    if noise_mode == 'none':
        raise ValueError("denoising_from denoises noisy latents: it cannot be combined with noise='none'")
    denoiser = Denoiser(load_scheduler(sd.pretrained, scheduler, **sd.hub_kwargs))
    plans = [None if start is None else plan_denoising(denoiser.scheduler, start, t)
             for start, t in zip(starts, timesteps)]
    moved = [f'branch {s.name!r}: timestep {t} -> {p.extract} (img2img from denoising_from={p.requested} '
             f'starts at {p.start})' for s, t, p in zip(specs, timesteps, plans) if p is not None and p.extract != t]
    if moved:
        name = type(denoiser.scheduler).__name__
        print_log(f"denoising_from: the extraction timestep is not on {name}'s img2img schedule, so the features "
                  'are taken at (and the UNet is given) the first scheduled timestep above it: ' + '; '.join(moved),
                  logger='current', level=logging.WARNING)
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
        """The scheduler's own noising at the plan's start (its latent space: x + sigma n for Euler),
        given its own first timestep as img2img does (Euler reads the begin index, DDIM/PNDM the value)."""
        scheduler = self.fresh(plan)
        t = scheduler.timesteps[plan.begin_index:plan.begin_index + 1].repeat(latents.shape[0])
        return scheduler.add_noise(latents.float(), noise.float(), t.to(latents.device)).to(dtype)

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
        # the scheduler's own timestep tensors: Euler's step() refuses Python ints (it reads them as
        # indices); the UNet gets the same values as plain numbers
        own = scheduler.timesteps[plan.begin_index:plan.begin_index + len(plan.steps) + 1]
        for t, value in zip(own, plan.steps):
            prediction = predict(scheduler.scale_model_input(latents, t), value)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0].to(latents.dtype)
        return scheduler.scale_model_input(latents, own[len(plan.steps)])


__all__ = ['DenoisingPlan', 'load_scheduler', 'plan_denoising', 'plan_branches', 'Denoiser']
