"""The install: mmcv's build decision on the three machine kinds, its per-kind wheel cache, the lock,
the environment doctor and the missing-CUDA-ops message."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / 'requirements' / 'lock.txt'
sys.path.insert(0, str(REPO / 'tools'))

import install_mmcv  # noqa: E402
import lockfile  # noqa: E402
from install_mmcv import Machine, plan_build  # noqa: E402

CPU_MACHINE = Machine('2.13.0', None, None, None)                       # CPU torch, no GPU
GPU_NO_TOOLKIT = Machine('2.13.0', '12.8', (9, 0), None)               # pip's CUDA torch, no nvcc
GPU_WITH_TOOLKIT = Machine('2.13.0', '12.8', (8, 6), '/usr/local/cuda')


def test_cpu_machine_builds_cpu_ops():
    build = plan_build(CPU_MACHINE)
    assert build.kind == 'cpu' and build.tag == 'mmcv-2.1.0-torch2.13.0-cpu'
    assert build.env['MMCV_WITH_OPS'] == '1' and build.env['FORCE_CUDA'] == '0'


def test_gpu_without_toolkit_hides_the_gpu_and_says_how_to_get_cuda_ops():
    build = plan_build(GPU_NO_TOOLKIT)
    # mmcv's setup.py builds CUDA ops whenever torch sees a GPU: the build must not see it
    assert build.kind == 'cpu' and build.env['CUDA_VISIBLE_DEVICES'] == '' and build.env['FORCE_CUDA'] == '0'
    assert 'no CUDA toolkit' in build.reason and 'make mmcv MMCV_OPS=cuda' in build.reason
    assert build.tag == plan_build(CPU_MACHINE).tag  # the same CPU-ops wheel as on a CPU machine


def test_gpu_with_toolkit_builds_cuda_ops_for_the_visible_architecture():
    build = plan_build(GPU_WITH_TOOLKIT)
    assert build.kind == 'cuda' and build.env['FORCE_CUDA'] == '1' and build.env['TORCH_CUDA_ARCH_LIST'] == '8.6'
    assert 'CUDA_VISIBLE_DEVICES' not in build.env and build.tag == 'mmcv-2.1.0-torch2.13.0-cu12.8-sm8.6'
    assert plan_build(GPU_WITH_TOOLKIT, 'auto', '8.0;9.0').tag.endswith('sm8.0_9.0')  # the user's arch list
    assert plan_build(GPU_WITH_TOOLKIT, 'cpu').kind == 'cpu'  # forced CPU ops


@pytest.mark.parametrize('machine, arch, message', [
    (CPU_MACHINE, None, 'CPU build'), (GPU_NO_TOOLKIT, None, 'CUDA toolkit'),
    (Machine('2.13.0', '12.8', None, '/usr/local/cuda'), None, 'TORCH_CUDA_ARCH_LIST')])
def test_impossible_cuda_request_names_the_fix(machine, arch, message):
    with pytest.raises(SystemExit, match=message):
        plan_build(machine, 'cuda', arch)
    with pytest.raises(SystemExit, match="'gpu' is not one of"):
        plan_build(machine, 'gpu')


def test_a_cached_wheel_of_the_other_kind_is_never_reused(tmp_path, monkeypatch):
    calls = []

    def fake_pip(*args, env=None):
        calls.append((args, env))
        if args[0] == 'wheel':  # what pip would build
            Path(args[args.index('-w') + 1], 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl').write_bytes(b'cuda')
    monkeypatch.setattr(install_mmcv, '_pip', fake_pip)
    cpu_folder = tmp_path / plan_build(CPU_MACHINE).tag
    cpu_folder.mkdir()
    (cpu_folder / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl').write_bytes(b'cpu')
    assert install_mmcv.build_wheel(plan_build(GPU_NO_TOOLKIT), tmp_path, '2').read_bytes() == b'cpu'
    assert calls == []  # the CPU-ops wheel serves a GPU machine without a toolkit, nothing compiled
    wheel = install_mmcv.build_wheel(plan_build(GPU_WITH_TOOLKIT), tmp_path, '2')
    assert wheel.read_bytes() == b'cuda' and wheel.parent.name.endswith('sm8.6')
    args, env = calls[-1]
    assert '--no-cache-dir' in args and env['FORCE_CUDA'] == '1'  # pip's cache, blind to the kind, is bypassed


def test_installed_mmcv_matches_this_machines_decision():
    assert install_mmcv.installed_mmcv_kind() == plan_build(install_mmcv.this_machine()).kind


def test_the_environment_equals_the_lock():
    installed = lockfile.installed_versions()
    assert lockfile.lock_differences(installed, lockfile.read_lock(LOCK),
                                     lockfile.torch_runtime_packages(installed)) == []


def test_the_lock_pins_the_verified_stack_without_local_labels():
    lock = lockfile.read_lock(LOCK)
    assert '+' not in LOCK.read_text()
    assert lock['torch'] == '2.13.0' and lock['mmcv'] == '2.1.0' and lock['peft'] == '0.21.2'
    assert lockfile.public_version('2.13.0+cu128') == lock['torch']
    tf = tuple(int(x) for x in lock['transformers'].split('.')[:2])
    assert tf < (5, 24)  # transformers 5.24 requires peft >= 0.22


def test_lock_differences_finds_drift_missing_and_unlocked_packages():
    lock = {'torch': '2.13.0', 'peft': '0.21.2', 'numpy': '2.3.5'}
    installed = {'torch': '2.13.0+cu128', 'peft': '0.21.2', 'numpy': '2.4.0', 'extra': '1.0',
                 'nvidia-cublas-cu12': '12.8', 'pip': '25', 'mmseg-gate': '0.1.0'}
    assert lockfile.lock_differences(installed, lock, {'nvidia-cublas-cu12'}) == [
        'extra 1.0 is installed but not in the lock', 'numpy 2.4.0 installed, lock has 2.3.5']
    del installed['peft']
    assert 'peft is not installed (lock: 0.21.2)' in lockfile.lock_differences(installed, lock)
    assert 'nvidia-cublas-cu12 12.8 is installed but not in the lock' in lockfile.lock_differences(installed, lock)


def test_doctor_reports_a_healthy_environment():
    import collect_env
    info, results = collect_env.run_checks(('configs/demo/gate_tiny_ade20k.py',))
    by_name = {r.name: r for r in results}
    assert [r.name for r in results if r.status == 'FAIL'] == []
    assert by_name['lock'].status == by_name['peft/transformers'].status == by_name['mmcv ops'].status == 'OK'
    assert dict(info)['peft'] == '0.21.2' and 'PyTorch' in dict(info)


def test_doctor_reports_a_peft_too_old_for_transformers(tmp_path):
    # a broken environment: an older peft's metadata shadows the installed one
    transformers_min = __import__('collect_env').transformers_min_peft()
    dist = tmp_path / 'peft-0.19.0.dist-info'
    dist.mkdir()
    (dist / 'METADATA').write_text('Metadata-Version: 2.1\nName: peft\nVersion: 0.19.0\n')
    env = {**os.environ, 'PYTHONPATH': f'{tmp_path}{os.pathsep}{os.environ.get("PYTHONPATH", "")}'}
    done = subprocess.run([sys.executable, str(REPO / 'tools/collect_env.py'), '--configs'], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (f'[FAIL] peft/transformers: transformers {lockfile.read_lock(LOCK)["transformers"]} requires peft >= '
            f'{transformers_min}, peft 0.19.0 is installed') in done.stdout
    assert 'fix: pip install -c requirements/lock.txt transformers peft' in done.stdout
    assert '[FAIL] lock: 1 package(s) differ from the verified stack: peft 0.19.0 installed, lock has 0.21.2' \
        in done.stdout


class _FocalHead(nn.Module):
    def __init__(self):
        super().__init__()
        from mmseg.models.losses import FocalLoss
        self.conv = nn.Conv2d(1, 1, 1)
        self.loss = FocalLoss()


def test_missing_cuda_ops_fail_with_the_rebuild_command(monkeypatch):
    from mmseg_gate.utils import mmcv_ops
    monkeypatch.setattr(mmcv_ops, 'mmcv_has_cuda_ops', lambda: False)
    with pytest.raises(RuntimeError, match=r'loss run\(s\) mmcv ops on the GPU.*make mmcv MMCV_OPS=cuda'):
        mmcv_ops.check_mmcv_cuda_ops(_FocalHead(), 'cuda')
    mmcv_ops.check_mmcv_cuda_ops(_FocalHead(), torch.device('cpu'))  # CPU tensors: mmcv's CPU ops serve
    mmcv_ops.check_mmcv_cuda_ops(nn.Conv2d(1, 1, 1), 'cuda')        # nothing needs mmcv kernels
    monkeypatch.setattr(mmcv_ops, 'mmcv_has_cuda_ops', lambda: True)
    mmcv_ops.check_mmcv_cuda_ops(_FocalHead(), 'cuda')


def test_gate_check_hook_runs_the_cuda_ops_check(monkeypatch):
    from types import SimpleNamespace

    from mmseg_gate.engine import checks
    seen = []
    monkeypatch.setattr(checks, 'check_mmcv_cuda_ops', seen.append)
    model = _FocalHead()
    checks.GATECheckHook(random_state=False).before_run(SimpleNamespace(model=model))
    assert seen == [model]
