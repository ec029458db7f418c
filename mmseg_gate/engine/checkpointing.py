"""Checkpoints that survive a kill, and a ``--resume`` that survives a bad checkpoint.

mmengine 0.10.7's ``CheckpointHook`` removes the oldest checkpoint (``max_keep_ckpts``) *before* it writes the new
one, writes it in place and then overwrites ``last_checkpoint`` in place: a kill during the save can leave only a
half-written file and a ``last_checkpoint`` naming a deleted one. :class:`AtomicCheckpointHook` writes the
checkpoint to a temporary name and renames it into place, then ``last_checkpoint`` the same way, and only then
removes the outdated checkpoint. :func:`resume_checkpoint` picks what ``--resume`` loads: the checkpoint
``last_checkpoint`` names if it can be read, else the newest readable ``iter_*.pth`` / ``epoch_*.pth``, saying which
files it skipped and why.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
from pathlib import Path

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

from ..checkpoint_compat import unreadable_reason
from ..utils.atomic import atomic_write_text

_NUMBERED = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) whose checkpoints and ``last_checkpoint`` are written whole or not at
    all, and which removes an outdated checkpoint only after the new one and ``last_checkpoint`` are in place.

    ``GATECheckHook`` turns a stock ``CheckpointHook`` into this one, so mmseg configs that list it get it too.
    Checkpoints on remote backends (``backend_args``) are saved as mmengine does.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and isinstance(self.file_backend, LocalBackend) and osp.isdir(self.out_dir):
            for name in os.listdir(self.out_dir):  # what a save killed mid-write left
                if name.startswith('.') and name.endswith('.pth.partial'):
                    os.remove(osp.join(self.out_dir, name))

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not isinstance(self.file_backend, LocalBackend):
            return super()._save_checkpoint_with_step(runner, step, meta)
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        # every rank passes the same name (mmengine writes on rank 0 only); rank 0 renames it into place
        partial = f'.{filename}.partial'
        runner.save_checkpoint(self.out_dir, partial, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        written = self.file_backend.join_path(self.out_dir, partial)
        with open(written, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(written, self.last_ckpt)
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        if outdated is not None:
            self._remove(self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated)))

    def _remove(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are folders
            self.file_backend.rmtree(path)


def make_checkpoints_atomic(runner) -> None:
    """Turn the runner's stock ``CheckpointHook`` into an :class:`AtomicCheckpointHook` (no state of its own)."""
    for hook in getattr(runner, 'hooks', ()):  # (a runner-like object without hooks: nothing to do)
        if type(hook) is CheckpointHook:
            hook.__class__ = AtomicCheckpointHook
            print_log('checkpoints are written atomically (AtomicCheckpointHook)', 'current', logging.DEBUG)


def _numbered_checkpoints(folder: str) -> list[str]:
    """``iter_*.pth`` / ``epoch_*.pth`` in ``folder``, newest (largest number) first."""
    if not osp.isdir(folder):
        return []
    found = [(int(m.group(2)), name) for name in os.listdir(folder) if (m := _NUMBERED.match(name))]
    return [osp.join(folder, name) for _, name in sorted(found, reverse=True)]


def resume_checkpoint(work_dir: str) -> str | None:
    """What ``--resume`` should load from ``work_dir``: ``last_checkpoint``'s file if readable, else the newest
    readable numbered checkpoint; ``None`` when the folder holds no checkpoint at all (a fresh start).

    Raises:
        RuntimeError: checkpoints exist but none can be read (naming each and why).
    """
    record = osp.join(work_dir, 'last_checkpoint')
    named = Path(record).read_text().strip() if osp.isfile(record) else ''
    candidates = ([named] if named else []) + _numbered_checkpoints(work_dir)
    if named:  # the folder the checkpoints went to (CheckpointHook's out_dir may differ from the work dir)
        candidates += _numbered_checkpoints(osp.dirname(named))
    skipped = []
    for path in dict.fromkeys(osp.normpath(p) for p in candidates):
        reason = unreadable_reason(path)
        if reason is None:
            if skipped or not named:
                why = ('last_checkpoint is empty' if osp.isfile(record) and not named else
                       'there is no last_checkpoint' if not named else 'the newer ones cannot be read')
                print_log(f'--resume: {why}; resuming from {path}, the newest readable checkpoint'
                          + ''.join(f'\n  skipped {p}: {r}' for p, r in skipped), 'current', logging.WARNING)
            return path
        skipped.append((path, reason))
    broken = [(p, r) for p, r in skipped if osp.exists(p)]
    if broken:
        raise RuntimeError(f'--resume: no checkpoint in {work_dir} can be read:\n  '
                           + '\n  '.join(f'{p}: {r}' for p, r in broken)
                           + '\nRestore one from a backup, or start over without --resume (or in another --work-dir).')
    if named:
        print_log(f'--resume: last_checkpoint names {named}, which does not exist, and {work_dir} holds no other '
                  'checkpoint: training starts from the beginning', 'current', logging.WARNING)
    return None


def choose_resume_checkpoint(runner) -> None:
    """Before mmengine's ``load_or_resume``: point an auto ``--resume`` (no ``load_from``) at a readable
    checkpoint instead of whatever ``last_checkpoint`` names (mmengine has no public setter for this)."""
    if getattr(runner, '_resume', False) and getattr(runner, '_load_from', None) is None:
        path = resume_checkpoint(runner.work_dir)
        if path is not None:
            runner._load_from = path
