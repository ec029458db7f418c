"""Fail fast, with the fix in the message, on configs that would break later."""
from __future__ import annotations

import os
from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
import torch
from mmseg.registry import HOOKS

from ..utils.finite import NonFiniteError, check_finite_images
from ..utils.mmcv_ops import check_mmcv_cuda_ops
from .checkpointing import choose_resume_checkpoint, make_checkpoints_atomic
from .depth_checks import check_depth_head


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# head/neck channels against the backbone: on the built model (this hook) and on the config before the build
from .heads import check_head_channels, check_model_config  # noqa: E402,F401


def _gate_backbone(model: Any):
    if is_model_wrapper(model):
        model = model.module
    backbone = getattr(model, 'backbone', None)
    return backbone if hasattr(backbone, 'frozen_provenance') else None


def provenance_differences(saved: dict, current: dict) -> list[str]:
    """What differs between the frozen parts a checkpoint was trained on and those built now."""
    diffs = []
    saved_loras, current_loras = saved.get('loras', {}), current.get('loras', {})
    for path in sorted(set(saved_loras) | set(current_loras)):
        old, new = saved_loras.get(path), current_loras.get(path)
        if old != new:
            diffs.append(f'LoRA file {path!r}: trained with sha256 {old or "(not used)"}, '
                         f'this model loaded {new or "(not used)"}')
    for key in sorted((set(saved) | set(current)) - {'loras'}):
        if saved.get(key) != current.get(key):
            diffs.append(f'{key}: trained with {saved.get(key)!r}, this model has {current.get(key)!r}')
    return diffs


@HOOKS.register_module()
class GATECheckHook(Hook):
    """Checks head/backbone channel agreement before the first iteration (train, val or test), records
    in every checkpoint's ``meta`` what the frozen parts were built from, and warns when a checkpoint
    is loaded into a model built from other files (e.g. a retrained LoRA under the same name).

    Args:
        random_state: also register a :class:`~mmseg_gate.engine.random_state.RandomStateHook` (unless
            the runner has one), so checkpoints carry the random state and ``--resume`` is exact.
    """

    priority = 'VERY_HIGH'
    META_KEY = 'gate_frozen'

    def __init__(self, random_state: bool = True) -> None:
        self.random_state = random_state

    def before_run(self, runner) -> None:
        check_head_channels(runner.model)
        check_depth_head(runner.model)  # VPDDepthHead: four levels, fmap_border against the backbone's padding
        check_mmcv_cuda_ops(runner.model)  # a CPU-ops mmcv with a head that needs its CUDA kernels
        if self.random_state:
            from .random_state import ensure_random_state_hook
            ensure_random_state_hook(runner)
        make_checkpoints_atomic(runner)
        choose_resume_checkpoint(runner)  # before the runner's load_or_resume: skip unreadable checkpoints

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        """Refuse images with NaN/inf pixels before they reach the model, naming their files."""
        if isinstance(data_batch, dict) and data_batch.get('inputs') is not None:
            check_finite_images(data_batch['inputs'], _batch_files(data_batch),
                                where=f'training iteration {runner.iter + 1}')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """Stop at a non-finite loss before this step's weights reach a checkpoint (CheckpointHook runs later)."""
        bad = {k: float(v) for k, v in (outputs or {}).items()
               if 'loss' in k and torch.is_tensor(v) and not bool(torch.isfinite(v).all())}
        if bad:
            files = [f for f in _batch_files(data_batch or {}) if f]
            raise NonFiniteError(
                f'training iteration {runner.iter + 1}: non-finite loss {bad}'
                + (f' on {", ".join(files)}' if files else '') + '. The weights of this step are not checkpointed; '
                'the last checkpoint is intact (--resume). Lower the learning rate, use AmpOptimWrapper\'s dynamic '
                'loss scale with --amp, or check those images and labels.')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        backbone = _gate_backbone(runner.model)
        if backbone is not None:
            checkpoint.setdefault('meta', {})[self.META_KEY] = backbone.frozen_provenance()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        backbone = _gate_backbone(runner.model)
        saved = (checkpoint.get('meta') or {}).get(self.META_KEY)
        if backbone is None or saved is None:
            return
        diffs = provenance_differences(saved, backbone.frozen_provenance())
        if diffs:
            from mmengine.logging import print_log
            import logging
            print_log('The checkpoint was trained on other frozen weights than this model was built from; its '
                      'trained parts may not fit them:\n  ' + '\n  '.join(diffs), 'current', logging.WARNING)


def _batch_files(data_batch: dict) -> list:
    return [getattr(s, 'img_path', None) for s in data_batch.get('data_samples') or []]


def check_data_roots(cfg) -> None:
    """Raise before any model is built if a dataloader's data folder does not exist."""
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if not loader:
            continue
        ds = loader.get('dataset', {})
        root = ds.get('data_root')
        if root and not os.path.isdir(root):
            raise FileNotFoundError(
                f'{key}.dataset.data_root={root!r} does not exist. Prepare the dataset as in mmseg\'s '
                "docs (user_guides/2_dataset_prepare.md) and pass its location, e.g. --cfg-options data_root=/path, "
                'or run `python tools/make_demo_dataset.py` for synthetic data in the same layout.')
