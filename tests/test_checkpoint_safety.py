"""Nothing lost: checkpoints written whole or not at all, a --resume that skips unreadable checkpoints, and runs
that stop at non-finite images or losses. Toy mmengine runs (about a second each); the SIGKILL during a save runs
in a subprocess (e2e)."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook

from mmseg_gate.checkpoint_compat import load_runner_checkpoint
from mmseg_gate.engine import GATECheckHook
from mmseg_gate.engine.checkpointing import AtomicCheckpointHook, resume_checkpoint, unreadable_reason
from mmseg_gate.utils.finite import NonFiniteError
from test_resume import Augmented, Noisy

TESTS = Path(__file__).parent


def run(work_dir, iters=6, hook='CheckpointHook', resume=False, model=None, dataset=None, hooks=None, keep=1):
    """A toy run with a checkpoint every 2 iterations, keeping ``keep`` (the tiny demos' setting was 1)."""
    from mmengine.runner import Runner
    torch.manual_seed(0)
    runner = Runner(
        model=model or Noisy(), work_dir=str(work_dir), default_scope='mmseg',
        experiment_name=f'run{time.monotonic_ns()}',
        train_dataloader=dict(dataset=dataset or Augmented(), batch_size=2, num_workers=0,
                              sampler=dict(type='InfiniteSampler', shuffle=True)),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=1e-3)),
        default_hooks=dict(checkpoint=dict(type=hook, interval=2, by_epoch=False, max_keep_ckpts=keep),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[GATECheckHook()] if hooks is None else hooks, randomness=dict(seed=0), resume=resume)
    runner.train()
    return runner


def log_of(runner):
    return (Path(runner.work_dir) / runner.timestamp / f'{runner.timestamp}.log').read_text()


def _pause_put_at(step, marker=None):
    """A LocalBackend.put that writes half of ``iter_<step>.pth`` and then fails (or, with ``marker``, signals
    and waits to be killed): a save cut short exactly while the file is being written."""
    put = LocalBackend.put

    def half_put(self, obj, filepath):
        if f'iter_{step}.pth' not in str(filepath):
            return put(self, obj, filepath)
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            f.flush()
        if marker:
            Path(marker).touch()
            time.sleep(600)
        raise KeyboardInterrupt('killed while writing')
    return half_put


def test_gate_check_hook_makes_stock_checkpoints_atomic(tmp_path):
    runner = run(tmp_path, iters=2)
    hook = next(h for h in runner.hooks if isinstance(h, CheckpointHook))
    assert type(hook) is AtomicCheckpointHook
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_2.pth')
    assert not list(tmp_path.glob('.*'))  # no temporaries left


@pytest.mark.parametrize('hook', ['CheckpointHook', 'AtomicCheckpointHook'])
def test_save_cut_short_keeps_the_previous_checkpoint(tmp_path, monkeypatch, hook):
    monkeypatch.setattr(LocalBackend, 'put', _pause_put_at(4))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, hook=hook)
    monkeypatch.undo()
    assert unreadable_reason(tmp_path / 'iter_2.pth') is None  # deleted by mmengine's hook before the save
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_2.pth')
    assert not (tmp_path / 'iter_4.pth').exists()  # the half-written file never had the real name
    resumed = run(tmp_path, resume=True)
    assert resumed.iter == 6 and 'resumed epoch: 0, iter: 2' in log_of(resumed)
    assert not list(tmp_path.glob('.*.partial'))  # the killed save's leftover is gone
    assert load_runner_checkpoint(str(tmp_path / 'iter_6.pth'))['meta']['iter'] == 6


def test_without_the_hook_the_cut_save_loses_everything(tmp_path, monkeypatch):
    """mmengine's own order (remove, then write in place): what the test above would see without the fix."""
    monkeypatch.setattr(LocalBackend, 'put', _pause_put_at(4))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, hooks=[])
    assert not (tmp_path / 'iter_2.pth').exists() and unreadable_reason(tmp_path / 'iter_4.pth') is not None


def test_resume_skips_a_truncated_latest_checkpoint(tmp_path):
    run(tmp_path, iters=4, keep=2)
    data = (tmp_path / 'iter_4.pth').read_bytes()
    (tmp_path / 'iter_4.pth').write_bytes(data[:len(data) // 3])  # a node lost mid-write
    assert 'cut short' in unreadable_reason(tmp_path / 'iter_4.pth')
    with pytest.raises(RuntimeError, match=r'iter_4.pth cannot be read: it is cut short'):
        load_runner_checkpoint(str(tmp_path / 'iter_4.pth'))
    assert resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_2.pth')
    resumed = run(tmp_path, resume=True, keep=2)
    log = log_of(resumed)
    assert 'skipped ' + str(tmp_path / 'iter_4.pth') in log and 'resuming from ' + str(tmp_path / 'iter_2.pth') in log
    assert resumed.iter == 6


@pytest.mark.parametrize('record', ['', 'dangling'])
def test_resume_with_an_empty_or_dangling_last_checkpoint(tmp_path, record):
    run(tmp_path, iters=4, keep=2)
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_99.pth') if record else '')
    assert resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')  # the newest readable one


def test_resume_without_any_readable_checkpoint(tmp_path):
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    assert resume_checkpoint(str(tmp_path)) is None  # nothing there: a fresh start, with a warning
    (tmp_path / 'iter_2.pth').write_bytes(b'PK\x03\x04 not a whole archive')
    with pytest.raises(RuntimeError, match=r'no checkpoint in .* can be read:\n  .*iter_2.pth: it is cut short'):
        resume_checkpoint(str(tmp_path))


@pytest.mark.e2e
def test_sigkill_during_a_save(tmp_path):
    """A real SIGKILL that lands while iter_4.pth is being written (the writer pauses half-way), with
    max_keep_ckpts=1 as the tiny configs had it: the run resumes from iter_2.pth."""
    marker = tmp_path / 'writing'
    script = tmp_path / 'train.py'
    script.write_text(textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import mmseg_gate  # noqa: F401
        from mmengine.fileio import LocalBackend
        from test_checkpoint_safety import _pause_put_at, run
        LocalBackend.put = _pause_put_at(4, {str(marker)!r})
        run({str(tmp_path / "wd")!r})
    '''))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(1200):
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    wd = tmp_path / 'wd'
    assert (wd / 'last_checkpoint').read_text() == str(wd / 'iter_2.pth')
    assert resume_checkpoint(str(wd)) == str(wd / 'iter_2.pth')
    assert run(wd, resume=True).iter == 6


class NaNAt(Augmented):
    """Sample 3 has one NaN pixel (a float image format, or a transform dividing by zero)."""

    def __getitem__(self, i):
        from mmengine.structures import BaseDataElement
        x = super().__getitem__(i)['x']
        if i == 3:
            x[1] = float('nan')
        return dict(x=x, data_samples=BaseDataElement(metainfo=dict(img_path=f'img_{i}.png')))


class Model(Noisy):
    def forward(self, x, data_samples=None, mode='loss'):
        return super().forward(x, mode)


def test_nonfinite_image_stops_the_run_naming_its_file(tmp_path):
    class Inputs(NaNAt):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return dict(inputs=item['x'], data_samples=item['data_samples'])

    class InputsModel(Noisy):
        def forward(self, inputs, data_samples=None, mode='loss'):
            return super().forward(inputs, mode)

    with pytest.raises(NonFiniteError, match=r'training iteration \d+ got 1 image\(s\) with non-finite pixels in a '
                                             r'batch of 2: position [01] \(img_3.png\): 1 NaN, 0 infinite'):
        run(tmp_path, model=InputsModel(), dataset=Inputs())
    assert not list(tmp_path.glob('iter_*.pth'))  # stopped before any step that saw it


def test_nonfinite_loss_stops_before_the_checkpoint(tmp_path):
    """The NaN reaches the loss (here under a key the input check does not read): the run stops at that
    iteration, and the checkpoint of that iteration is not written."""
    with pytest.raises(NonFiniteError, match=r'training iteration (\d+): non-finite loss .*img_3.png.*not '
                                             r'checkpointed'):
        run(tmp_path, model=Model(), dataset=NaNAt(), iters=20)
    saved = sorted(tmp_path.glob('iter_*.pth'))
    for path in saved:
        state = load_runner_checkpoint(str(path))['state_dict']
        assert all(torch.isfinite(v).all() for v in state.values())


def test_backbone_refuses_nonfinite_images(tiny, image):
    from conftest import backbone_cfg, build
    backbone = build(backbone_cfg(tiny)).eval()
    bad = image.repeat(3, 1, 1, 1)
    bad[2, 0, 5, 7] = float('inf')
    with pytest.raises(NonFiniteError, match=r'the backbone got 1 image\(s\) .* batch of 3: position 2: 0 NaN, '
                                             r'1 infinite'):
        backbone(bad)


def test_lora_file_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from mmseg_gate.lora.files import save_lora
    layers = {'unet': {'down_blocks.0.attentions.0.proj_in': (torch.ones(2, 4), torch.ones(4, 2), 2.0)}}
    path = save_lora(tmp_path / 'lora.safetensors', layers)
    before = path.read_bytes()
    import safetensors.torch

    def cut(tensors, filename, metadata=None):
        Path(filename).write_bytes(b'half')
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.torch, 'save_file', cut)
    with pytest.raises(KeyboardInterrupt):
        save_lora(path, {'unet': {k: (d * 2, u, a) for k, (d, u, a) in layers['unet'].items()}})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['lora.safetensors']


def test_shipped_configs_keep_two_checkpoints_written_atomically():
    """max_keep_ckpts=1 lost a run to a kill during the next save; every config writes atomically (its hook
    type, or GATECheckHook's upgrade of a stock CheckpointHook)."""
    from mmengine.config import Config
    from test_configs import CONFIGS
    bad = []
    for path in CONFIGS:
        if path.name.startswith(('swap_', 'upernet_r50_to_')):
            continue  # swaps keep mmseg's config but for the backbone (their writes are atomic through GATECheckHook)
        cfg = Config.fromfile(str(path))
        ckpt = cfg.get('default_hooks', {}).get('checkpoint')
        if ckpt is None:
            continue
        hooks = {h.get('type') for h in cfg.get('custom_hooks', [])}
        atomic = ckpt.type == 'AtomicCheckpointHook' or (ckpt.type == 'CheckpointHook' and 'GATECheckHook' in hooks)
        if not atomic or ckpt.get('max_keep_ckpts', -1) in (0, 1):
            bad.append(f'{path.name}: {ckpt.type}, max_keep_ckpts={ckpt.get("max_keep_ckpts", -1)}, hooks {hooks}')
    assert not bad, bad
