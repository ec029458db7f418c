"""Exact --resume (RandomStateHook) on a toy mmengine run, in process and in about a second: the
model draws from torch's, numpy's and Python's generators in training, validation draws from
torch's in the middle of it. The shipped configs killed with SIGKILL: test_tools_e2e.py (GATE, one
and two processes) and test_lora.py (LoRA training).

Marked ``device`` (docs/gpu.md): mmengine's Runner trains on the GPU whenever one is visible; with ``--device
cuda`` the tests also check that the checkpoints carry the CUDA generators' states, which the toy model's noise
and dropout draw from there."""
import io
import random
import shutil

import numpy as np
import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from torch import nn
from torch.utils.data import Dataset

from mmseg_gate.checkpoint_compat import load_runner_checkpoint
from mmseg_gate.engine import GATECheckHook
from mmseg_gate.engine.random_state import (CHECKPOINT_KEY, RandomStateHook, capture_random_state,
                                            restore_random_state)
from mmseg_gate.testing.checkpoints import leaves  # a checkpoint part as (dotted key, leaf) pairs

MAX_ITERS = 8


class Augmented(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):  # random augmentation in the loading process (num_workers=0), as mmcv's transforms
        return dict(x=torch.full((4,), float(i)) + float(np.random.rand()))


class Noisy(BaseModel):
    """Training draws from all three generators: dropout and noise (torch), a numpy and a Python
    factor (which mmengine's replay of the skipped batches does not repeat); eval draws noise too."""

    def __init__(self):
        super().__init__()
        self.lin, self.drop = nn.Linear(4, 4), nn.Dropout(0.5)

    def forward(self, x, mode='loss'):
        x = torch.stack(x) if isinstance(x, (list, tuple)) else x
        h = self.drop(self.lin(x + torch.randn_like(x)))
        if mode == 'loss':
            return dict(loss=(h * (1 + np.random.rand() + random.random()) - 1).pow(2).mean())
        return [h]


class Sum(BaseMetric):
    def process(self, data_batch, data_samples):
        self.results.append(float(sum(s.sum() for s in data_samples)))

    def compute_metrics(self, results):
        return dict(total=sum(results))


def train(work_dir, name, hooks, resume_from=None, val_interval=3, by_epoch=False):
    """A toy run: MAX_ITERS iterations (checkpoint every 3), or with ``by_epoch`` 3 epochs of 3
    iterations (a checkpoint after each); returns the last checkpoint and the log."""
    from mmengine.runner import Runner
    torch.manual_seed(0)  # the same initial weights in every run
    loop = dict(by_epoch=True, max_epochs=3) if by_epoch else dict(by_epoch=False, max_iters=MAX_ITERS)
    runner = Runner(
        model=Noisy(), work_dir=str(work_dir), experiment_name=name, default_scope='mmseg',
        log_processor=dict(by_epoch=by_epoch),
        train_dataloader=dict(dataset=Augmented(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler' if by_epoch else 'InfiniteSampler', shuffle=True)),
        train_cfg=dict(**loop, val_interval=val_interval),
        val_dataloader=dict(dataset=Augmented(), sampler=dict(type='DefaultSampler', shuffle=False), batch_size=2,
                            num_workers=0),
        val_cfg=dict(), val_evaluator=[Sum()],
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=1e-3, momentum=0.9)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1 if by_epoch else 3, by_epoch=by_epoch,
                                           max_keep_ckpts=10),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=hooks, randomness=dict(seed=0), load_from=resume_from and str(resume_from),
        resume=resume_from is not None)
    runner.train()
    log = (work_dir / runner.timestamp / f'{runner.timestamp}.log').read_text()
    last = work_dir / ('epoch_3.pth' if by_epoch else f'iter_{MAX_ITERS}.pth')
    return load_runner_checkpoint(str(last), map_location='cpu'), log


def differing(a, b):
    """Names of the tensors of state_dict and optimizer state that differ between two checkpoints."""
    out = []
    for part in ('state_dict', 'optimizer'):
        flat_a, flat_b = dict(leaves(a[part], part)), dict(leaves(b[part], part))
        assert flat_a.keys() == flat_b.keys()
        out += [k for k in flat_a if not (torch.equal(flat_a[k], flat_b[k]) if torch.is_tensor(flat_a[k])
                                          else flat_a[k] == flat_b[k])]
    return out


def test_state_is_plain_and_round_trips():
    state = capture_random_state()
    want = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restore_random_state(torch.load(buf, weights_only=True))  # no allowlist needed
    assert torch.equal(torch.rand(3), want[0]) and np.array_equal(np.random.rand(3), want[1])
    assert [random.random() for _ in range(3)] == want[2]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    wd = tmp_path_factory.mktemp('full')
    ckpt, log = train(wd, 'full', [RandomStateHook()])
    return wd, ckpt, log


def check_device(saved, device):
    """On ``--device cuda``: the run trained there (mmengine's Runner picks the GPU) and saved its generators."""
    if device.type == 'cuda':
        from mmengine.device import get_device
        assert get_device() == 'cuda', 'mmengine does not train on the GPU here'
        cuda = saved['ranks'][0].get('cuda')
        assert cuda and len(cuda) == torch.cuda.device_count(), 'the CUDA generators are not in the checkpoint'


@pytest.mark.device
def test_resumed_toy_run_is_exact(uninterrupted, tmp_path, device):
    wd, full, _ = uninterrupted
    saved = load_runner_checkpoint(str(wd / 'iter_3.pth'))[CHECKPOINT_KEY]
    assert saved['world_size'] == 1 and len(saved['ranks']) == 1
    check_device(saved, device)
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)  # what the checkpoint adds needs no allowlist
    # "killed" after iteration 4: resumed from iteration 3, with a validation (iteration 6) on the way
    # GATECheckHook, which the shipped configs list, registers the RandomStateHook
    resumed, log = train(tmp_path / 'resumed', 'resumed', [GATECheckHook()], resume_from=wd / 'iter_3.pth')
    assert 'random state restored' in log
    assert differing(full, resumed) == []
    # without the hook the resumed iterations draw what the first ones drew: the test can fail
    plain, log = train(tmp_path / 'plain', 'plain', [GATECheckHook(random_state=False)],
                       resume_from=wd / 'iter_3.pth')
    assert len(differing(full, plain)) > 0


@pytest.mark.device
def test_resumed_epoch_based_run_is_exact(tmp_path, device):
    # an epoch loop resumes at the next epoch without replaying batches: numpy's state (the
    # augmentation's) comes back from the checkpoint too; validation after epoch 2
    full, _ = train(tmp_path / 'full', 'e_full', [RandomStateHook()], by_epoch=True, val_interval=2)
    resumed, log = train(tmp_path / 'resumed', 'e_resumed', [RandomStateHook()], by_epoch=True, val_interval=2,
                         resume_from=tmp_path / 'full' / 'epoch_1.pth')
    assert 'random state restored' in log and differing(full, resumed) == []
    check_device(load_runner_checkpoint(str(tmp_path / 'full' / 'epoch_1.pth'))[CHECKPOINT_KEY], device)
    plain, _ = train(tmp_path / 'plain', 'e_plain', [], by_epoch=True, val_interval=2,
                     resume_from=tmp_path / 'full' / 'epoch_1.pth')
    assert len(differing(full, plain)) > 0


def test_hook_leaves_a_fresh_run_as_it_was(uninterrupted, tmp_path):
    # validation only at the end: then the hook changes nothing of a fresh run
    with_hook, _ = train(tmp_path / 'a', 'a', [RandomStateHook()], val_interval=MAX_ITERS)
    without, _ = train(tmp_path / 'b', 'b', [], val_interval=MAX_ITERS)
    assert differing(with_hook, without) == []


def test_checkpoint_of_another_world_size_or_without_state(uninterrupted, tmp_path):
    wd, _, _ = uninterrupted
    ckpt = load_runner_checkpoint(str(wd / 'iter_3.pth'))
    state = ckpt[CHECKPOINT_KEY]['ranks'][0]
    ckpt[CHECKPOINT_KEY] = dict(format=1, world_size=2, ranks=[state, state])
    torch.save(ckpt, tmp_path / 'two.pth')
    _, log = train(tmp_path / 'two', 'two', [RandomStateHook()], resume_from=tmp_path / 'two.pth')
    assert 'written by 2 process(es), this run has 1' in log and 'cannot be restored exactly' in log
    assert 'random state restored' in log  # rank 0 continues rank 0's generators
    del ckpt[CHECKPOINT_KEY]
    torch.save(ckpt, tmp_path / 'old.pth')
    _, log = train(tmp_path / 'old', 'old', [RandomStateHook()], resume_from=tmp_path / 'old.pth')
    assert 'carries no random state' in log and 'random state restored' not in log


def test_load_from_without_resume_restores_nothing(uninterrupted, tmp_path):
    wd, _, _ = uninterrupted
    from mmengine.runner import Runner
    shutil.copy(wd / 'iter_3.pth', tmp_path / 'init.pth')
    wd2 = tmp_path / 'finetune'
    runner = Runner(model=Noisy(), work_dir=str(wd2), experiment_name='finetune', default_scope='mmseg',
               train_dataloader=dict(dataset=Augmented(), sampler=dict(type='InfiniteSampler'), batch_size=2,
                                     num_workers=0),
               train_cfg=dict(by_epoch=False, max_iters=1), optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
               custom_hooks=[RandomStateHook()], randomness=dict(seed=0), load_from=str(tmp_path / 'init.pth'))
    runner.train()
    log = (wd2 / runner.timestamp / f'{runner.timestamp}.log').read_text()
    assert 'random state restored' not in log and 'carries no random state' not in log
