"""The label-scarce protocol: train and test one config on several random splits, report mean ± std."""
from __future__ import annotations

import copy
import os.path as osp

import numpy as np
from mmengine.config import Config
from mmengine.runner import Runner


def split_config(cfg: Config, seed: int, work_dir: str) -> Config:
    """``cfg`` for split ``seed``: every dataloader's dataset draws split ``seed``; the run is seeded with it;
    validation during training is dropped (the split's test set is scored once, at the end)."""
    cfg = copy.deepcopy(cfg)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(key):
            cfg[key]['dataset']['split_seed'] = seed
    cfg.randomness = dict(cfg.get('randomness') or {}, seed=seed)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.work_dir = osp.join(work_dir, f'split{seed}')
    return cfg


def run_splits(cfg: Config, seeds=(0, 1, 2, 3, 4), work_dir: str | None = None, metric: str = 'mIoU') -> dict:
    """Train and test ``cfg`` on each split; returns the per-split ``metric`` and its mean and std (ddof=1)."""
    work_dir = work_dir or cfg.get('work_dir') or osp.join('work_dirs', 'label_scarce')
    scores = {}
    for seed in seeds:
        runner = Runner.from_cfg(split_config(cfg, seed, work_dir))
        runner.train()
        scores[seed] = float(runner.test()[metric])
    values = np.array(list(scores.values()))
    return dict(scores=scores, mean=float(values.mean()),
                std=float(values.std(ddof=1)) if len(values) > 1 else 0.0, metric=metric)
