"""Hooks that provoke faults in training runs, for the kill-and-resume tests and ``tools/gpu_check.py``.

Not imported by ``import mmseg_gate``: a config that needs them names this module in ``custom_imports``
(``imports=['mmseg_gate', 'mmseg_gate.testing.fault_hooks']``), as :func:`config_with_hooks` writes it.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class KillAfterIteration(Hook):
    """SIGKILL this process right after training iteration ``iteration`` (and its checkpoint): a real kill, no
    cleanup, as a preempted job dies."""
    priority = 'LOWEST'  # after CheckpointHook

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class DeterministicWarnOnly(Hook):
    """``randomness.deterministic=True``, except that ops without a deterministic kernel warn instead of raising."""
    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        torch.use_deterministic_algorithms(True, warn_only=True)


def config_with_hooks(base: str | Path, path: Path, hooks: list[dict]) -> str:
    """Write ``path``: the config ``base`` with ``hooks`` after its own custom hooks, importing this module."""
    from mmengine.config import Config
    own = Config.fromfile(str(base)).to_dict().get('custom_hooks', [])
    path.write_text(f"_base_ = [{str(base)!r}]\n"
                    f"custom_imports = dict(imports=['mmseg_gate', {__name__!r}], allow_failed_imports=False)\n"
                    f"custom_hooks = {own + hooks!r}\n")
    return str(path)
