"""Exact ``--resume``: checkpoints carry the random state training consumes, restored where it was used.

mmengine 0.10.7 saves no random state. After ``--resume`` torch's generator restarts where it stood
after model set-up, so the resumed iterations draw the training noise (the noise policy's posterior
samples and noise, the LoRA trainer's timesteps) and dropout masks that the first iterations had,
and the run ends on other weights than an uninterrupted one. :class:`RandomStateHook` fixes that:

* ``before_save_checkpoint`` writes ``checkpoint['random_state']``: per process (rank) the states
  of torch's CPU generator, of each CUDA device's generator (once CUDA is initialised), of numpy's
  global generator and of Python's ``random``. Only plain values (tensors, lists, ints, floats,
  strings): the checkpoint stays loadable with ``torch.load(weights_only=True)``.
* With several processes only rank 0 writes checkpoints: after every training iteration the ranks
  gather their states (``mmengine.dist.all_gather_object``), so rank 0 writes all of them.
* ``after_load_checkpoint`` keeps the state of the checkpoint; if the run was resumed from it,
  each rank gets its own state back right before the first resumed batch is fetched, i.e. after
  mmengine's train loop replays the skipped batches (which keeps the samplers and the data
  pipeline's numpy draws in step) and before anything of the first resumed iteration draws. That
  is where an uninterrupted run stands with the state it had when it wrote the checkpoint.
* Validation during training runs on its own: the generators are set back after it to where
  training left them (an iteration of the val dataloader alone draws from torch's generator), so
  a validation between a checkpoint and the next iteration, which a resumed run does not repeat,
  does not change training.

A resume with another number of processes cannot be exact: it is logged, ranks that have a saved
state get theirs, and training goes on.

:class:`~mmseg_gate.engine.checks.GATECheckHook` and :class:`~mmseg_gate.lora.training.SaveLoRAHook`,
which the shipped configs list, register this hook when a runner starts (``random_state=False``
turns that off); a config may also list ``dict(type='RandomStateHook')`` itself.
"""
from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

#: the checkpoint key of the saved states
CHECKPOINT_KEY = 'random_state'
FORMAT = 1


def capture_random_state() -> dict[str, Any]:
    """This process's generator states, as plain values ``torch.load(weights_only=True)`` reads."""
    state: dict[str, Any] = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # nothing drew from CUDA before
        state['cuda'] = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state['numpy'] = dict(kind=str(kind), key=[int(k) for k in key], pos=int(pos), has_gauss=int(has_gauss),
                          cached_gaussian=float(cached))
    version, internal, gauss_next = random.getstate()
    state['python'] = dict(version=int(version), state=[int(x) for x in internal],
                           gauss_next=None if gauss_next is None else float(gauss_next))
    return state


def restore_random_state(state: dict[str, Any]) -> list[str]:
    """Set the generators to ``state`` (from :func:`capture_random_state`); returns what could not be."""
    problems = []
    torch.set_rng_state(state['torch'].cpu())  # resume maps checkpoints to the training device
    cuda = state.get('cuda')
    if cuda:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for i, s in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(s.cpu(), i)
        if len(cuda) != count:
            problems.append(f'the checkpoint has the generator states of {len(cuda)} CUDA devices, this process '
                            f'sees {count}')
    if 'numpy' in state:
        n = state['numpy']
        np.random.set_state((n['kind'], np.asarray(n['key'], dtype=np.uint32), n['pos'], n['has_gauss'],
                             n['cached_gaussian']))
    if 'python' in state:
        p = state['python']
        random.setstate((p['version'], tuple(p['state']), p['gauss_next']))
    return problems


def _dist():
    from mmengine.dist import get_rank, get_world_size
    return get_rank(), get_world_size()


def _warn(message: str) -> None:
    print_log(message, 'current', logging.WARNING)


class _RestoreBeforeBatch:
    """Stands in for the train loop's dataloader iterator until the resumed run fetches its first
    new batch: lets the replayed batches through, restores the random state, puts the real iterator
    back."""

    def __init__(self, loop, skip: int, restore) -> None:
        self._loop, self._iterator, self._skip, self._restore = loop, loop.dataloader_iterator, skip, restore

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip > 0:
            self._skip -= 1
            return next(self._iterator)
        self._loop.dataloader_iterator = self._iterator
        self._restore()
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Saves each rank's random state in checkpoints and restores it on ``--resume`` (see the module)."""

    priority = 'LOW'  # after_train_iter: before CheckpointHook (VERY_LOW) writes

    def __init__(self) -> None:
        self._loaded: tuple[dict, dict | None] | None = None  # (meta, saved states) of the last checkpoint read
        self._pending: dict | None = None  # the state to restore before the first resumed batch
        self._gathered: list | None = None  # every rank's state after this iteration (several processes)
        self._val_stash: dict | None = None  # training's state while a validation runs
        self._training = False

    # ------------------------------------------------------------------ saving
    def _training_state(self) -> dict:
        return self._val_stash if self._val_stash is not None else capture_random_state()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if _dist()[1] > 1:  # only rank 0 writes checkpoints: it needs every rank's state
            from mmengine.dist import all_gather_object
            self._gathered = all_gather_object(self._training_state())

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        rank, world = _dist()
        if world == 1:
            ranks = [self._training_state()]
        elif self._gathered is not None and len(self._gathered) == world:
            ranks = list(self._gathered)
        else:  # saved outside the training iterations: this rank's state only
            ranks = [self._training_state() if r == rank else None for r in range(world)]
        checkpoint[CHECKPOINT_KEY] = dict(format=FORMAT, world_size=world, ranks=ranks)

    # ------------------------------------------------------------------ validation in training
    def before_val(self, runner) -> None:
        if self._training:
            self._val_stash = capture_random_state()

    def after_val(self, runner) -> None:
        if self._val_stash is not None:
            stash, self._val_stash = self._val_stash, None
            restore_random_state(stash)

    # ------------------------------------------------------------------ resuming
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # also called for load_from (fine-tuning): whether this was a resume is known in before_train
        self._loaded = (dict(checkpoint.get('meta') or {}), checkpoint.get(CHECKPOINT_KEY))

    def before_train(self, runner) -> None:
        self._training = True
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        meta, saved = loaded
        if not (runner.iter > 0 and meta.get('iter') == runner.iter and meta.get('epoch') == runner.epoch):
            return  # weights loaded (load_from), training starts afresh
        state = self._state_of_this_rank(saved)
        if state is None:
            return
        self._pending = state
        loop = runner.train_loop
        from mmengine.runner import IterBasedTrainLoop
        if isinstance(loop, IterBasedTrainLoop) and hasattr(loop, 'dataloader_iterator'):
            # run() replays runner.iter batches, then fetches the first new one
            loop.dataloader_iterator = _RestoreBeforeBatch(loop, runner.iter, self._restore_pending)
        else:  # epoch loops start the next epoch: nothing draws before its dataloader does
            self._restore_pending()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._gathered = None
        if self._pending is not None:  # a loop that did not fetch through its dataloader_iterator
            self._restore_pending()

    def after_train(self, runner) -> None:
        self._training = False

    def _restore_pending(self) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        for problem in restore_random_state(state):
            _warn(f'Resume: {problem}; those generators keep their fresh state (not exact)')
        kinds = ', '.join(k for k in ('torch', 'cuda', 'numpy', 'python') if state.get(k) is not None)
        print_log(f'Resume: random state restored from the checkpoint ({kinds}) before the first resumed batch',
                  'current')

    @staticmethod
    def _state_of_this_rank(saved: dict | None) -> dict | None:
        if not saved or not saved.get('ranks'):
            _warn('Resume: the checkpoint carries no random state (written without RandomStateHook): the '
                  'resumed iterations draw other training noise and dropout than an uninterrupted run would')
            return None
        rank, world = _dist()
        ranks, saved_world = saved['ranks'], saved.get('world_size', len(saved['ranks']))
        state = ranks[rank] if rank < len(ranks) else None
        if saved_world != world:
            _warn(f'Resume: the checkpoint was written by {saved_world} process(es), this run has {world}: the '
                  'random state cannot be restored exactly (ranks with a saved state continue it, the others '
                  'keep their fresh one); training goes on')
        elif state is None:
            _warn(f'Resume: the checkpoint has no random state of rank {rank} (saved outside a training '
                  'iteration): it keeps its fresh one, not exact')
        return state


def ensure_random_state_hook(runner) -> None:
    """Register a :class:`RandomStateHook` on ``runner`` unless it has one (call from ``before_run``:
    it joins the hooks that run after the caller)."""
    if not any(isinstance(h, RandomStateHook) for h in runner.hooks):
        runner.register_hook(RandomStateHook())


__all__ = ['RandomStateHook', 'capture_random_state', 'restore_random_state', 'ensure_random_state_hook',
           'CHECKPOINT_KEY']
