"""Validate the whole project on a GPU machine in one command, within a time budget (issue 31; docs/gpu.md).

  make gpu-check                      # = python tools/gpu_check.py             (GPU: about 10 minutes)
  make gpu-check-dry                  # = python tools/gpu_check.py --dry-run   (CPU, tiny sizes: a few minutes)
  python tools/gpu_check.py [--dry-run] [--out DIR] [--budget-s N] [--stages a,b,...]

Stages, each in its own processes with its own time limit (never more than what is left of ``--budget-s``; a stage
that would get less than its minimum is skipped for time, and the report says so):

  doctor      (a) tools/collect_env.py, plus the GPU, driver, CUDA/cuDNN, TF32, SDPA and mmcv-ops facts
  suite       (b) the device selection of the suite: pytest -m device --device cuda --dtype bf16
  train       (c) the tiny demo trained on the device (frozen stack in bf16): the loss falls, the checkpoint
                  holds only trainable weights
  ddp         (c') the demo through tools/dist_train.sh, one process, NCCL (gloo on CPUs), --amp on CUDA: DDP
                  over the trainable part with the frozen stack outside it
  resume      (d) the demo with randomness.deterministic=True, killed (SIGKILL) after iteration 3 and --resume'd:
                  its last checkpoint against the uninterrupted run's, bitwise (and, where strict deterministic
                  mode refuses an op, again with torch's warn_only, naming the ops)
  benchmark   (e) tools/benchmark.py, SD1.5-shaped, bf16, 512: extraction batch 1 and a training step batch 2,
                  reference-style against ours
  flux        (f) FLUX.1-dev-width double and single blocks at 1024 in bf16 and torchao int8 weight-only
                  (tools/benchmark_flux_blocks.py's measurement), with the int8 output error
  levers      (f') the speed levers each alone (compile, compile_denoiser, channels_last, sdpa_backends): warm-up
                  (compilation) and extraction time batch 1 against the defaults; last, so that it gets what is left
  report      (g) OUT/gpu_check.json and OUT/gpu_check.md: GPU, driver, versions, every number, what failed,
                  what was skipped for time

``--dry-run`` runs the same stages on the CPU at tiny sizes (tiny assets, 64-pixel benchmark, 64-wide FLUX blocks,
a subset of the device selection in bf16) so that the script cannot rot: tests/test_gpu_check.py runs it in CI.
The exit code is 1 when a stage failed, 0 otherwise (stages skipped for time are reported, not failures).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / 'tools'
DEMO_CONFIG = REPO / 'configs' / 'demo' / 'gate_tiny_ade20k.py'
#: names of frozen parts: none may appear in a trainable checkpoint
FROZEN_KEYS = ('unet', 'vae', 'controlnet', 'text_encoder', 'denoiser', 'transformer', 'image_encoder', '.sd.')
#: the stack versions the report records
PACKAGES = ('torch', 'torchvision', 'mmcv', 'mmengine', 'mmsegmentation', 'diffusers', 'transformers', 'peft',
            'accelerate', 'safetensors', 'torchao', 'numpy', 'mmseg-gate')
#: the device selection's subset in a dry run: one comparison per kind of code path, and the DiT families
DRY_SUITE = ('test_basic_branch_equals_full_forward_with_hooks or test_lora_controlnet_branch_equals_diffusers '
             'or test_encoder_decoder_trains_one_step or test_dit_family_on_the_device')
#: a training log line of mmengine's LoggerHook
LOSS_LINE = re.compile(r'Iter\(train\) \[\s*(\d+)/\d+\].*?\sloss: ([-\d.eE+naif]+)')
NONDETERMINISTIC = re.compile(r'(\w+) does not have a deterministic implementation')


# ---------------------------------------------------------------------------------------------- stages and budget
@dataclass
class Stage:
    name: str
    letter: str
    title: str
    limit_s: float  # on a GPU
    dry_limit_s: float  # in a dry run
    min_s: float  # skipped for time when less is left
    status: str = 'pending'  # ok | failed | timeout | skipped
    reason: str = ''
    wall_s: float = 0.0
    given_s: float = 0.0
    details: dict = field(default_factory=dict)


def make_stages() -> list[Stage]:
    return [Stage('doctor', 'a', 'environment doctor (tools/collect_env.py)', 60, 60, 10),
            Stage('suite', 'b', 'device selection of the suite (pytest -m device)', 240, 180, 30),
            Stage('train', 'c', 'tiny demo trained on the device', 120, 120, 30),
            Stage('ddp', "c'", 'DDP through dist_train.sh, one process (NCCL; gloo on CPUs)', 90, 90, 30),
            Stage('resume', 'd', 'kill and --resume with deterministic=True, weights compared bitwise', 200, 200, 45),
            Stage('benchmark', 'e', 'tools/benchmark.py SD1.5-shaped: extraction b1, training step b2', 300, 150, 40),
            Stage('flux', 'f', 'FLUX.1-width blocks at 1024: bf16 and torchao int8', 150, 90, 20),
            # last: what the issue asks first gets the time first
            Stage('levers', "f'", 'speed levers, each alone: extraction b1 (ours)', 240, 120, 40)]


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.monotonic(), float(seconds)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


class StageTimeout(Exception):
    pass


class StageFailed(Exception):
    pass


# ---------------------------------------------------------------------------------------------- subprocesses
@dataclass
class Ran:
    cmd: list
    rc: int | None
    wall_s: float
    timed_out: bool
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors='replace') if self.log.exists() else ''

    def tail(self, chars: int = 3000) -> str:
        return self.output[-chars:]


class Runner:
    """Runs the stages' commands: logs under OUT/logs, each in its own process group (killed whole on timeout)."""

    def __init__(self, out: Path, env: dict) -> None:
        self.logs = out / 'logs'
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env, self.count = env, 0

    def __call__(self, name: str, cmd: list, deadline: float, cwd: Path | None = None, env: dict | None = None,
                 check: bool = True) -> Ran:
        self.count += 1
        log = self.logs / f'{self.count:02d}_{name}.log'
        timeout = deadline - time.monotonic()
        if timeout <= 1:
            raise StageTimeout(f'no time left for {name}')
        t0 = time.monotonic()
        with open(log, 'w') as f:
            f.write('$ ' + ' '.join(map(str, cmd)) + '\n')
            f.flush()
            proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd or REPO, stdout=f, stderr=subprocess.STDOUT,
                                    env={**self.env, **(env or {})}, start_new_session=True)
            try:
                rc, timed_out = proc.wait(timeout=timeout), False
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                rc, timed_out = proc.wait(), True
        ran = Ran(cmd, rc, time.monotonic() - t0, timed_out, log)
        if timed_out:
            raise StageTimeout(f'{name} ran past its time ({timeout:.0f} s): {log}')
        if check and rc != 0:
            raise StageFailed(f'{name} failed (exit {rc}): {log}\n{ran.tail(2500)}')
        return ran


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- environment
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> dict:
    try:
        out = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total,compute_cap',
                              '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return dict(error=f'{type(error).__name__}: {error}')
    if out.returncode:
        return dict(error=(out.stderr or out.stdout).strip()[:300])
    rows = [dict(zip(('name', 'driver', 'memory', 'compute_cap'), (c.strip() for c in line.split(','))))
            for line in out.stdout.strip().splitlines()]
    return dict(gpus=rows)


def environment(device: str) -> dict:
    """What the report needs about the machine, torch's CUDA and the stack (this process's defaults: the tools'
    processes start from them too)."""
    import torch
    env = dict(python=platform.python_version(), platform=platform.platform(), cpus=os.cpu_count(),
               hostname=platform.node(), versions={p: _version(p) for p in PACKAGES},
               torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
               # torch's defaults, which the package leaves alone (docs/gpu.md, "TF32")
               tf32=dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn_conv=torch.backends.cudnn.allow_tf32,
                         float32_matmul_precision=torch.get_float32_matmul_precision()))
    with contextlib.suppress(Exception):
        env['cudnn'] = torch.backends.cudnn.version()
    if torch.cuda.is_available():
        index = torch.device(device).index or 0 if device.startswith('cuda') else 0
        props = torch.cuda.get_device_properties(index)
        env['gpu'] = dict(name=props.name, capability=f'{props.major}.{props.minor}',
                          memory_gib=round(props.total_memory / 2 ** 30, 1), count=torch.cuda.device_count(),
                          bf16=torch.cuda.is_bf16_supported())
        env['sdpa'] = dict(flash=torch.backends.cuda.flash_sdp_enabled(),
                           mem_efficient=torch.backends.cuda.mem_efficient_sdp_enabled(),
                           cudnn=getattr(torch.backends.cuda, 'cudnn_sdp_enabled', lambda: None)(),
                           math=torch.backends.cuda.math_sdp_enabled())
        env['nvidia_smi'] = nvidia_smi()
    try:
        from mmcv.ops import get_compiling_cuda_version
        built = get_compiling_cuda_version()
        env['mmcv_ops'] = dict(cuda=built != 'not available', compiled_cuda=built,
                               note='the GATE configs (UPerHead, FCNHead, CrossEntropy/Lovasz) need no mmcv CUDA '
                                    'kernel: GATECheckHook stops a run whose model does (utils/mmcv_ops.py)')
    except Exception as error:  # noqa: BLE001
        env['mmcv_ops'] = dict(error=f'{type(error).__name__}: {error}')
    return env


# ---------------------------------------------------------------------------------------------- the stages
class Check:
    """The stages, sharing the workspace (tiny assets, synthetic data) and the options."""

    def __init__(self, args, out: Path, run: Runner) -> None:
        self.args, self.out, self.run = args, out, run
        self.dry, self.device = args.dry_run, args.device
        self.cuda = self.device.startswith('cuda')
        self.py = sys.executable
        self.ws = out / 'ws'
        self.tiny = Path(args.tiny) if args.tiny else None
        self.tiny_dit = Path(args.tiny_dit) if args.tiny_dit else None

    # ------------------------------------------------------------------ workspace
    def workspace(self) -> None:
        """Tiny assets (unless given) and the demo's data layout: ws/data/tiny_sd, ws/data/demo."""
        from mmseg_gate.testing import make_tiny_sd
        from mmseg_gate.testing.synthetic_data import make_ade20k_like
        from mmseg_gate.testing.tiny_dit import make_tiny_dit
        self.tiny = make_tiny_sd(self.tiny or self.out / 'tiny')
        self.tiny_dit = make_tiny_dit(self.tiny_dit or self.tiny)
        data = self.ws / 'data'
        data.mkdir(parents=True, exist_ok=True)
        link = data / 'tiny_sd'
        if not link.exists():
            link.symlink_to(Path(self.tiny).resolve())
        if not (data / 'demo' / 'ADEChallengeData2016').is_dir():
            make_ade20k_like(data / 'demo', num_train=8, num_val=3)

    def start_benchmark_assets(self) -> None:
        """Start writing (e)'s weights in the background (SD1.5-shaped: ~6 GB, made once; CPU and disk work, beside
        the GPU stages); the benchmark stage waits for it. A dry run's tiny assets exist already: the same call."""
        maker, path = ('make_tiny_sd', self.tiny) if self.dry else ('make_sd15_shaped', self.args.sd15_assets)
        self.assets_log = self.run.logs / '00_benchmark_assets.log'
        self.assets_t0 = time.monotonic()
        with open(self.assets_log, 'w') as f:
            self.assets_proc = subprocess.Popen(
                [self.py, '-c', f'from mmseg_gate.testing import {maker}; {maker}({str(path)!r})'], cwd=REPO,
                stdout=f, stderr=subprocess.STDOUT, env=self.run.env, start_new_session=True)

    def stop_benchmark_assets(self) -> None:
        proc = getattr(self, 'assets_proc', None)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def test_env(self) -> dict:
        return dict(MMSEG_GATE_TINY=str(self.tiny), MMSEG_GATE_TINY_DIT=str(self.tiny_dit))

    # ------------------------------------------------------------------ (a)
    def doctor(self, stage: Stage, deadline: float) -> None:
        ran = self.run('doctor', [self.py, TOOLS / 'collect_env.py'], deadline, check=False)
        text = ran.output
        checks = re.findall(r'^\[\s*(OK|WARN|FAIL)\s*\] ([^:]+):', text, re.M)
        stage.details.update(exit_code=ran.rc, checks={n: s for s, n in checks},
                             failed=[n for s, n in checks if s == 'FAIL'], log=str(ran.log))
        print(text[text.find('\n') + 1:], flush=True)  # the doctor's own output, for the console
        if ran.rc not in (0, 1) or not checks:  # 1: a check FAILed (reported); anything else: the doctor broke
            raise StageFailed(f'tools/collect_env.py did not run (exit {ran.rc}):\n{ran.tail()}')

    # ------------------------------------------------------------------ (b)
    def suite(self, stage: Stage, deadline: float) -> None:
        xml = self.out / 'suite.xml'
        xml.unlink(missing_ok=True)
        cmd = [self.py, '-m', 'pytest', '-q', '-m', 'device', '--device', self.device, '--dtype', self.args.dtype,
               '-p', 'no:cacheprovider', f'--junitxml={xml}', '-rfEs', 'tests']
        if self.dry:
            cmd[-1:-1] = ['-k', DRY_SUITE]
        ran = self.run('suite', cmd, deadline, env=self.test_env(), check=False)
        stage.details.update(junit(xml), command=' '.join(map(str, cmd[1:])), exit_code=ran.rc, log=str(ran.log))
        if ran.rc not in (0, 1) or not xml.exists():  # 1: tests failed (listed); else pytest itself failed
            raise StageFailed(f'pytest did not run the selection (exit {ran.rc}):\n{ran.tail()}')
        if stage.details['failed']:
            raise StageFailed(f"{len(stage.details['failed'])} test(s) failed: "
                              + ', '.join(f['name'] for f in stage.details['failed']))

    # ------------------------------------------------------------------ (c)
    def train_options(self, iters: int, checkpoint_every: int) -> list[str]:
        opts = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters + 100}',
                f'default_hooks.checkpoint.interval={checkpoint_every}', f'param_scheduler.0.end={iters}',
                'default_hooks.logger.interval=1', 'log_processor.window_size=1']
        if self.cuda:
            opts.append(f'model.backbone.dtype={self.args.dtype}')
        return opts

    def train_tool(self, name: str, config, work_dir: Path, options: list[str], deadline: float,
                   extra: list | None = None, env: dict | None = None, check: bool = True) -> Ran:
        return self.run(name, [self.py, TOOLS / 'train.py', config, '--work-dir', work_dir, *(extra or []),
                               '--cfg-options', *options], deadline, cwd=self.ws, env=env, check=check)

    def train(self, stage: Stage, deadline: float) -> None:
        iters = 12 if self.dry else 60
        wd = fresh(self.ws / 'work_dirs' / 'train')
        ran = self.train_tool('train', DEMO_CONFIG, wd, self.train_options(iters, iters), deadline)
        losses = logged_losses(ran.output)
        stage.details.update(iterations=iters, wall_s_tool=round(ran.wall_s, 1), losses=losses, log=str(ran.log),
                             frozen_dtype=self.args.dtype if self.cuda else 'fp32')
        if self.cuda:
            stage.details['on_cuda'] = 'CUDA available: True' in ran.output
            if not stage.details['on_cuda']:
                raise StageFailed('mmengine did not see the GPU (no "CUDA available: True" in the log)')
        if len(losses) < iters:
            raise StageFailed(f'{len(losses)} of {iters} iterations logged a loss')
        k = max(3, iters // 4)
        first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
        stage.details.update(loss_first=first, loss_last=last, loss_fell=last < first)
        stage.details.update(checkpoint_summary(wd / f'iter_{iters}.pth'))
        if not last < first:
            raise StageFailed(f'the loss did not fall: mean of the first {k} {first:.4f}, of the last {k} {last:.4f}')
        if stage.details['frozen_keys']:
            raise StageFailed(f"frozen weights in the checkpoint: {stage.details['frozen_keys'][:5]}")

    # ------------------------------------------------------------------ (c')
    def ddp(self, stage: Stage, deadline: float) -> None:
        wd = fresh(self.ws / 'work_dirs' / 'ddp')
        extra = ['--amp'] if self.cuda else []  # mmengine's AmpOptimWrapper asserts a GPU
        options = self.train_options(2, 2) + ['env_cfg.dist_cfg.backend=nccl']  # gloo on CPUs (engine/dist.py)
        ran = self.run('ddp', ['bash', TOOLS / 'dist_train.sh', DEMO_CONFIG, '1', '--work-dir', wd, *extra,
                               '--cfg-options', *options], deadline, cwd=self.ws,
                       env=dict(PORT=str(free_port()), PYTHON=self.py))
        text = ran.output
        stage.details.update(amp=bool(extra), backend='nccl' if self.cuda else 'gloo (nccl asked, mapped)',
                             distributed='Distributed training: True' in text, losses=logged_losses(text),
                             log=str(ran.log))
        stage.details.update(checkpoint_summary(wd / 'iter_2.pth'))
        if not stage.details['distributed']:
            raise StageFailed('the run was not distributed ("Distributed training: True" missing from the log)')
        if stage.details['frozen_keys']:
            raise StageFailed(f"frozen weights in the DDP checkpoint: {stage.details['frozen_keys'][:5]}")

    # ------------------------------------------------------------------ (d)
    def resume(self, stage: Stage, deadline: float) -> None:
        from mmseg_gate.testing.checkpoints import checkpoint_differences
        from mmseg_gate.testing.fault_hooks import config_with_hooks
        env = dict(CUBLAS_WORKSPACE_CONFIG=':4096:8')  # what torch's deterministic mode needs for cuBLAS
        options = self.train_options(5, 2) + ['randomness.deterministic=True', 'randomness.seed=0']
        attempts = {}
        for mode in ('strict', 'warn_only'):
            base = str(DEMO_CONFIG) if mode == 'strict' else config_with_hooks(
                DEMO_CONFIG, self.ws / 'gpu_check_warn_only.py', [dict(type='DeterministicWarnOnly')])
            killed = config_with_hooks(base, self.ws / f'gpu_check_{mode}_killed.py',
                                       [dict(type='KillAfterIteration', iteration=3)])
            result = attempts[mode] = {}
            full_dir, part_dir = (fresh(self.ws / 'work_dirs' / f'resume_{mode}_{p}') for p in ('full', 'part'))
            full = self.train_tool(f'resume_{mode}_full', base, full_dir, options, deadline, env=env, check=False)
            result['nondeterministic_ops'] = sorted(set(NONDETERMINISTIC.findall(full.output)))
            if full.rc != 0:
                result.update(status='failed', error=last_error(full.output), log=str(full.log))
                if mode == 'strict' and result['nondeterministic_ops']:
                    continue  # torch refused an op in strict mode: measure what warn_only gives
                break
            cut = self.train_tool(f'resume_{mode}_killed', killed, part_dir, options, deadline, env=env,
                                  check=False)
            if cut.rc != -signal.SIGKILL or 'Iter(train) [4/' in cut.output:
                raise StageFailed(f'the killed run did not die after iteration 3 (exit {cut.rc}):\n{cut.tail()}')
            back = self.train_tool(f'resume_{mode}_resumed', base, part_dir, options, deadline, env=env,
                                   extra=['--resume'])
            diffs = checkpoint_differences(full_dir / 'iter_5.pth', part_dir / 'iter_5.pth')
            full_losses, resumed_losses = logged_losses(full.output, True), logged_losses(back.output, True)
            result.update(status='ran', differences=diffs, bitwise=all(d['differ'] == 0 for d in diffs.values()),
                          random_state_restored='random state restored' in back.output,
                          losses_equal=all(full_losses.get(i) == v for i, v in resumed_losses.items()),
                          resumed_iterations=sorted(resumed_losses))
            break
        stage.details.update(attempts=attempts, cublas_workspace_config=':4096:8')
        ran = [m for m, r in attempts.items() if r.get('status') == 'ran']
        if not ran:
            raise StageFailed('no kill-and-resume attempt trained: ' + '; '.join(
                f"{m}: {r.get('error', '')[:300]}" for m, r in attempts.items()))
        result = attempts[ran[0]]
        stage.details.update(mode=ran[0], bitwise=result['bitwise'])
        if not result['random_state_restored']:
            raise StageFailed('the resumed run did not restore the random state')
        if not result['bitwise']:
            raise StageFailed(f"the resumed run ({ran[0]}) ends on other weights: {result['differences']}")
        if not result['losses_equal']:
            raise StageFailed(f'the resumed run ({ran[0]}) logged other losses than the uninterrupted one')

    # ------------------------------------------------------------------ (e)
    def benchmark_assets(self, stage: Stage, deadline: float) -> None:
        """Wait for the benchmark weights written in the background since the start."""
        if getattr(self, 'assets_proc', None) is None:
            self.start_benchmark_assets()
        try:
            rc = self.assets_proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop_benchmark_assets()
            raise StageTimeout(f'the benchmark weights were not written in time: {self.assets_log}') from None
        stage.details['assets_s'] = round(time.monotonic() - self.assets_t0, 1)  # from their start, in the background
        if rc != 0:
            raise StageFailed(f'writing the benchmark weights failed (exit {rc}): {self.assets_log}\n'
                              + self.assets_log.read_text(errors='replace')[-2500:])

    def benchmark_run(self, name: str, extra: list, deadline: float) -> dict:
        """One tools/benchmark.py run (SD1.5-shaped; tiny in a dry run): its summary, with log and command."""
        if self.dry:
            common = ['--preset', 'tiny', '--assets', self.tiny, '--size', '64', '--iters', '1', '--warmup', '0',
                      '--device', 'cpu', '--dtype', 'fp32']
        else:
            common = ['--preset', 'sd15', '--assets', self.args.sd15_assets, '--size', '512', '--iters', '3',
                      '--warmup', '1', '--device', self.device, '--dtype', self.args.dtype]
        path = self.out / f'benchmark_{name}.json'
        path.unlink(missing_ok=True)
        ran = self.run(f'benchmark_{name}', [self.py, TOOLS / 'benchmark.py', *common, *extra, '--json', path],
                       deadline, cwd=self.ws)
        return dict(summarize_benchmark(json.loads(path.read_text())), log=str(ran.log),
                    command='tools/benchmark.py ' + ' '.join(map(str, common + extra)))

    def benchmark(self, stage: Stage, deadline: float) -> None:
        self.benchmark_assets(stage, deadline)
        runs = {'extract_b1': ['--batch', '1', '--branches', 'gate'],
                # a dry run times ours only (test_benchmark.py runs the reference's training step): CI's minutes
                'train_step_b2': ['--batch', '2', '--branches', 'gate', '--train-step']
                + (['--modes', 'gate'] if self.dry else [])}
        for name, extra in runs.items():
            stage.details[name] = self.benchmark_run(name, extra, deadline)

    # ------------------------------------------------------------------ (f')
    def levers(self, stage: Stage, deadline: float) -> None:
        """Each speed lever alone (gate_features/speed_levers.py), ours only, extraction batch 1: the numbers that
        decide whether a lever becomes a default. The first run is the defaults; a lever that does not fit in
        what is left is reported as skipped for time."""
        self.benchmark_assets(stage, deadline)
        runs = stage.details['runs'] = {}
        for name, options in (LEVERS_DRY if self.dry else LEVERS).items():
            if deadline - time.monotonic() < 20:
                runs[name] = dict(skipped='skipped for time')
                continue
            # one warm-up also in a dry run: the compilation is timed apart from the iterations
            extra = ['--batch', '1', '--branches', 'gate', '--modes', 'gate', '--warmup', '1'] + (
                ['--gate-options', *options] if options else [])
            try:
                r = self.benchmark_run(f'lever_{name}', extra, deadline)
                runs[name] = dict(r['gate'], log=r['log'], command=r['command'])
            except (StageFailed, StageTimeout) as error:
                runs[name] = dict(failed=str(error).splitlines()[0][:300])
        failed = [k for k, v in runs.items() if 'failed' in v]
        if failed:
            raise StageFailed(f'speed levers failed: {failed}')

    # ------------------------------------------------------------------ (f)
    def flux(self, stage: Stage, deadline: float) -> None:
        path = self.out / 'flux_blocks.json'
        path.unlink(missing_ok=True)  # no stale numbers from an earlier run
        cmd = [self.py, __file__, '--flux-worker', path, '--device', self.device, '--dtype', self.args.dtype]
        if self.dry:
            cmd.append('--dry-run')
        ran = self.run('flux', cmd, deadline, check=False)
        if path.exists():
            stage.details.update(json.loads(path.read_text()))
        stage.details['log'] = str(ran.log)
        if ran.rc != 0:
            raise StageFailed(f'the FLUX block worker failed (exit {ran.rc}): {ran.log}\n{ran.tail(2500)}')
        if stage.details.get('int8_failed'):
            raise StageFailed(f"torchao int8 failed: {stage.details['int8_failed']}")
        errors = stage.details.get('int8_error', {})
        bad = {k: v for k, v in errors.items() if not v < 0.1}
        if bad:
            raise StageFailed(f'int8 outputs far from bf16 ones (max abs error / max abs output): {bad}')


# ---------------------------------------------------------------------------------------------- stage helpers
#: (f') the speed levers, each alone, as ``--gate-options`` (the dry run: dynamo's eager backend, no inductor build)
LEVERS = {'defaults': [], 'compile': ['compile=True'], 'compile_denoiser': ['compile_denoiser=True'],
          'channels_last': ['channels_last=True'], 'sdpa_flash_efficient': ['sdpa_backends=flash,efficient']}
LEVERS_DRY = {'defaults': [], 'compile': ["compile={'backend': 'eager'}"],
              'compile_denoiser': ["compile_denoiser={'backend': 'eager'}"], 'channels_last': ['channels_last=True'],
              'sdpa_flash_math': ['sdpa_backends=flash,math']}

def fresh(work_dir: Path) -> Path:
    """An empty work dir: an earlier run's checkpoints would be resumed from."""
    shutil.rmtree(work_dir, ignore_errors=True)
    return work_dir


def logged_losses(log: str, by_iteration: bool = False):
    """The losses of mmengine's log lines: a list in iteration order, or ``{iteration: loss}``."""
    found = {int(i): float(v) for i, v in LOSS_LINE.findall(log)}
    return found if by_iteration else [found[i] for i in sorted(found)]


def last_error(log: str) -> str:
    lines = [ln for ln in log.strip().splitlines() if re.match(r'\w*(Error|Exception)\b', ln.strip())]
    return (lines[-1] if lines else log.strip().splitlines()[-1] if log.strip() else '')[:500]


def checkpoint_summary(path: Path) -> dict:
    """What a trained checkpoint holds: size, tensors, key prefixes, any key of a frozen part."""
    from mmseg_gate.checkpoint_compat import load_runner_checkpoint
    if not path.exists():
        raise StageFailed(f'no checkpoint at {path}')
    state = load_runner_checkpoint(str(path), map_location='cpu')['state_dict']
    prefixes = sorted({'.'.join(k.split('.')[:2]) if k.startswith('backbone.') else k.split('.')[0] for k in state})
    return dict(checkpoint=str(path), checkpoint_mb=round(path.stat().st_size / 2 ** 20, 2),
                state_dict_tensors=len(state),
                trainable_params_m=round(sum(v.numel() for v in state.values() if v.is_floating_point()) / 1e6, 3),
                key_prefixes=prefixes, frozen_keys=[k for k in state if any(f in k for f in FROZEN_KEYS)])


def junit(path: Path) -> dict:
    """Counts, failures (with their first message line) and skip reasons of a pytest junit XML file."""
    if not path.exists():
        return dict(tests=0, passed=0, failed=[], skipped=[], time_s=None)
    root = ET.parse(path).getroot()
    suite = root if root.tag == 'testsuite' else root.find('testsuite')
    failed, skipped, passed = [], [], 0
    for case in suite.iter('testcase'):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        bad = case.find('failure') if case.find('failure') is not None else case.find('error')
        skip = case.find('skipped')
        if bad is not None:
            failed.append(dict(name=name, message=(bad.get('message') or '').splitlines()[0][:300] if
                               bad.get('message') else ''))
        elif skip is not None:
            skipped.append(dict(name=name, reason=(skip.get('message') or '')[:300]))
        else:
            passed += 1
    return dict(tests=passed + len(failed) + len(skipped), passed=passed, failed=failed, skipped=skipped,
                time_s=float(suite.get('time', 0)))


def summarize_benchmark(r: dict) -> dict:
    keep = ('warmup_s', 's_per_iter', 'images_per_s', 'peak_mem_mb', 'frozen_params_m', 'trainable_checkpoint_mb',
            'stages_ms')
    out = {mode: {k: r[mode][k] for k in keep if k in r[mode]} for mode in ('reference', 'gate') if mode in r}
    out.update({k: r[k] for k in ('speedup', 'mem_ratio', 'max_abs_diff', 'max_abs_feature') if k in r})
    return out


# ---------------------------------------------------------------------------------------------- (f) the worker
def flux_worker(args) -> None:
    """FLUX.1 blocks in ``--dtype`` and in torchao int8 weight-only, on ``--device``: times, activation peaks,
    weight bytes, the int8 outputs' error; full width (3072) on a GPU, 64 wide in a dry run."""
    import torch
    sys.path.insert(0, str(TOOLS))
    import benchmark_flux_blocks as bfb
    from diffusers.models.transformers.transformer_flux import (FluxPosEmbed, FluxSingleTransformerBlock,
                                                                FluxTransformerBlock)
    if args.dry_run:
        heads, head_dim, axes, text_tokens, sizes, batches = 2, 32, (8, 12, 12), 16, (64,), (1, 3)
        warmup, repeats, budget = 1, 2, 5.0
    else:
        heads, head_dim, axes = bfb.FLUX_DEV['num_attention_heads'], bfb.FLUX_DEV['attention_head_dim'], \
            bfb.FLUX_DEV['axes_dims_rope']
        text_tokens, sizes, batches, warmup, repeats, budget = bfb.TEXT_TOKENS, (1024,), (1, 3), 2, 10, 20.0
    dim, device, dtype = heads * head_dim, args.device, bfb.DTYPES[args.dtype]
    torch.manual_seed(0)
    blocks = dict(double=FluxTransformerBlock(dim=dim, num_attention_heads=heads, attention_head_dim=head_dim),
                  single=FluxSingleTransformerBlock(dim=dim, num_attention_heads=heads, attention_head_dim=head_dim))
    blocks = {k: b.to(device, dtype).eval() for k, b in blocks.items()}
    if device.startswith('cuda'):
        memory = bfb.CudaMemory()
    else:
        try:
            memory = bfb.CpuMemory()
        except OSError:  # /proc/self/clear_refs not writable (some containers): no activation peaks
            memory = type('NoMemory', (), dict(method='unavailable', start=lambda self: None,
                                               peak=lambda self: 0))()

    def inputs(size: int, batch: int) -> dict:
        side = size // 16
        img_ids = torch.zeros(side, side, 3)
        img_ids[..., 1] += torch.arange(side)[:, None]
        img_ids[..., 2] += torch.arange(side)[None, :]
        ids = torch.cat([torch.zeros(text_tokens, 3), img_ids.reshape(-1, 3)]).to(device)
        rotary = FluxPosEmbed(theta=10000, axes_dim=list(axes))(ids)
        g = torch.Generator().manual_seed(1)  # on the CPU, moved: the same inputs on every device
        rand = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
        return dict(hidden_states=rand(batch, side * side, dim), encoder_hidden_states=rand(batch, text_tokens, dim),
                    temb=rand(batch, dim), image_rotary_emb=rotary)

    def weight_bytes(block) -> float | None:
        """What the block's weights take serialised (quantized tensor subclasses count their int8 data and
        scales); ``None`` where a subclass does not serialise."""
        buf = io.BytesIO()
        try:
            torch.save(block.state_dict(), buf)
        except Exception as error:  # noqa: BLE001
            result.setdefault('weight_mb_errors', []).append(f'{type(error).__name__}: {error}'[:300])
            return None
        return buf.tell() / 2 ** 20

    def outputs(block, inp) -> list:
        with torch.no_grad():
            out = block(**inp)
        return [t.float() for t in (out if isinstance(out, tuple) else (out,)) if torch.is_tensor(t)]

    result = dict(setup=dict(device=device, dtype=args.dtype, width=dim, heads=heads, head_dim=head_dim,
                             text_tokens=text_tokens, sizes=list(sizes), batches=list(batches), dry_run=args.dry_run,
                             memory_method=memory.method, torch=torch.__version__,
                             torchao=_version('torchao')),
                  params_per_block={k: sum(p.numel() for p in b.parameters()) for k, b in blocks.items()})
    probe = inputs(sizes[0], 1)
    reference = {k: outputs(b, probe) for k, b in blocks.items()}
    def measure_all(precision: str) -> None:
        result.setdefault('weight_mb', {})[precision] = {k: weight_bytes(b) for k, b in blocks.items()}
        measured = result.setdefault('measured', {})[precision] = {}
        for size in sizes:
            for batch in batches:
                inp = inputs(size, batch)
                row = measured[f'{size}_b{batch}'] = {}
                for kind, block in blocks.items():
                    row[kind] = bfb.measure(block, inp, memory, device, warmup, repeats, budget)
                    print(f'{precision:5s} {size:5d} b{batch} {kind:6s} {row[kind]["median_s"] * 1e3:9.2f} ms '
                          f'act. peak {row[kind]["activation_peak_mb"]:9.1f} MB', flush=True)
                del inp
        depth = bfb.deepest_tap(REPO / 'configs' / 'dit' / 'gate_flux1_dev_ade20k.py')
        result.setdefault('extrapolated', {})[precision] = bfb.extrapolate(
            measured, sizes, batches, depth, 1 if precision == 'int8' else torch.finfo(dtype).bits // 8)
        Path(args.flux_worker).write_text(json.dumps(result, indent=2))  # what is measured survives a failure

    measure_all(args.dtype)
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
        for block in blocks.values():
            quantize_(block, Int8WeightOnlyConfig())
        result['int8_weight_type'] = type(blocks['double'].attn.to_q.weight).__name__
        result['int8_weight_device'] = str(blocks['double'].attn.to_q.weight.device)
        result['int8_error'] = {}
        for kind, block in blocks.items():
            got = outputs(block, probe)
            result['int8_error'][kind] = max(((g - r).abs().max() / r.abs().max().clamp_min(1e-12)).item()
                                             for g, r in zip(got, reference[kind]))
        measure_all('int8')
    except Exception as error:  # noqa: BLE001  (reported by the stage, the bf16 numbers kept)
        result['int8_failed'] = f'{type(error).__name__}: {error}\n{traceback.format_exc()[-1500:]}'
    Path(args.flux_worker).write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------- (g) the report
def write_report(out: Path, setup: dict, env: dict, stages: list[Stage]) -> tuple[Path, Path]:
    data = dict(setup=setup, environment=env,
                stages=[dict(name=s.name, letter=s.letter, title=s.title, status=s.status, reason=s.reason,
                             wall_s=round(s.wall_s, 1), limit_s=round(s.given_s, 1), details=s.details)
                        for s in stages],
                failed=[s.name for s in stages if s.status in ('failed', 'timeout')],
                skipped_for_time=[s.name for s in stages if s.status == 'skipped' and 'time' in s.reason])
    json_path, md_path = out / 'gpu_check.json', out / 'gpu_check.md'
    json_path.write_text(json.dumps(data, indent=2, default=str))
    md_path.write_text(markdown(data))
    return json_path, md_path


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        return f'{v:.{digits}g}' if abs(v) < 1e4 else f'{v:,.0f}'
    return str(v)


def markdown(data: dict) -> str:
    setup, env = data['setup'], data['environment']
    gpu = env.get('gpu') or {}
    smi = (env.get('nvidia_smi') or {}).get('gpus') or [{}]
    lines = [f"# mmseg-gate GPU check{' (dry run, CPU, tiny sizes)' if setup['dry_run'] else ''}", '',
             f"{setup['date']}, {setup['device']} / {setup['dtype']}, budget {setup['budget_s']:.0f} s, "
             f"total {setup['total_s']:.0f} s; `{setup['command']}`", '',
             '| | |', '|---|---|',
             f"| GPU | {gpu.get('name', 'none')} (capability {gpu.get('capability', '-')}, "
             f"{gpu.get('memory_gib', '-')} GiB, bf16 {gpu.get('bf16', '-')}) |",
             f"| driver | {smi[0].get('driver', '-')} |",
             f"| torch / CUDA / cuDNN | {env['versions'].get('torch')} / {env.get('torch_cuda')} / "
             f"{env.get('cudnn')} |",
             f"| TF32 defaults | matmul {env['tf32']['matmul']}, cuDNN conv {env['tf32']['cudnn_conv']} |",
             f"| SDPA backends | {env.get('sdpa', '-')} |",
             f"| mmcv ops | {env.get('mmcv_ops', {}).get('compiled_cuda', env.get('mmcv_ops'))} |",
             '| versions | ' + ', '.join(f'{k} {v}' for k, v in env['versions'].items() if v) + ' |', '',
             '## Stages', '', '| stage | what | status | wall s | limit s | note |', '|---|---|---|---|---|---|']
    for s in data['stages']:
        note = s['reason'].splitlines()[0][:160] if s['reason'] else ''
        lines.append(f"| {s['letter']} {s['name']} | {s['title']} | **{s['status']}** | {s['wall_s']} | "
                     f"{s['limit_s']} | {note} |")
    lines += ['', f"Failed: {', '.join(data['failed']) or 'none'}. "
                  f"Skipped for time: {', '.join(data['skipped_for_time']) or 'none'}.", '']
    by = {s['name']: s for s in data['stages']}
    d = by.get('suite', {}).get('details') or {}
    if d:
        lines += ['## (b) Device selection', '', f"`{d.get('command')}`: {d.get('passed')} passed, "
                  f"{len(d.get('failed', []))} failed, {len(d.get('skipped', []))} skipped of {d.get('tests')} "
                  f"in {_fmt(d.get('time_s'))} s", '']
        lines += [f"- FAILED {f['name']}: {f['message']}" for f in d.get('failed', [])]
        lines += [f"- skipped {f['name']}: {f['reason']}" for f in d.get('skipped', [])] + ['']
    for name, title in (('train', '(c) Training the tiny demo'), ('ddp', "(c') DDP")):
        d = by.get(name, {}).get('details') or {}
        if d.get('losses'):
            lines += [f'## {title}', '',
                      f"losses {', '.join(_fmt(x) for x in d['losses'][:3])} ... "
                      f"{', '.join(_fmt(x) for x in d['losses'][-3:])}"
                      + (f"; mean of the first quarter {_fmt(d['loss_first'])}, of the last {_fmt(d['loss_last'])}"
                         if 'loss_first' in d else ''),
                      f"checkpoint {d.get('checkpoint_mb')} MB, {d.get('state_dict_tensors')} tensors, "
                      f"{d.get('trainable_params_m')} M values, prefixes {d.get('key_prefixes')}, frozen keys "
                      f"{d.get('frozen_keys') or 'none'}", '']
    d = by.get('resume', {}).get('details') or {}
    if d.get('attempts'):
        lines += ['## (d) Kill and resume, deterministic=True', '']
        for mode, r in d['attempts'].items():
            lines.append(f"- {mode}: {r.get('status')}; bitwise {r.get('bitwise')}; ops without a deterministic "
                         f"kernel: {r.get('nondeterministic_ops') or 'none'}; differences {r.get('differences')}"
                         + (f"; error: {r['error']}" if r.get('error') else ''))
        lines.append('')
    d = by.get('benchmark', {}).get('details') or {}
    if d:
        lines += ['## (e) tools/benchmark.py', '', '| run | mode | s/iteration | images/s | peak MB | speed-up | '
                  'mem ratio | max abs diff |', '|---|---|---|---|---|---|---|---|']
        for run in ('extract_b1', 'train_step_b2'):
            r = d.get(run)
            for mode in [m for m in ('reference', 'gate') if m in r] if r else ():
                m = r[mode]
                lines.append(f"| {run} | {mode} | {_fmt(m.get('s_per_iter', '-'))} | "
                             f"{_fmt(m.get('images_per_s', '-'))} | {_fmt(m.get('peak_mem_mb', '-'))} | "
                             f"{_fmt(r.get('speedup', '-'))} | {_fmt(r.get('mem_ratio', '-'))} | "
                             f"{_fmt(r.get('max_abs_diff', '-'))} |")
        lines.append('')
    d = by.get('flux', {}).get('details') or {}
    if d.get('measured'):
        lines += ['## (f) FLUX.1 blocks', '', f"width {d['setup']['width']}, {d['setup']['text_tokens']} text tokens; "
                  f"int8 weights {d.get('int8_weight_type')} on {d.get('int8_weight_device')}; int8 output error "
                  f"(max abs / max abs output) {d.get('int8_error')}", '',
                  '| precision | input | block | median ms | activation peak MB | weights MB |',
                  '|---|---|---|---|---|---|']
        for precision, rows in d['measured'].items():
            for key, row in rows.items():
                for kind, m in row.items():
                    lines.append(f"| {precision} | {key} | {kind} | {_fmt(m['median_s'] * 1e3)} | "
                                 f"{_fmt(m['activation_peak_mb'])} | {_fmt(d['weight_mb'][precision][kind])} |")
        lines.append('')
    d = (by.get('levers', {}).get('details') or {}).get('runs') or {}
    if d:
        base = (d.get('defaults') or {}).get('s_per_iter')
        lines += ["## (f') Speed levers, each alone (extraction batch 1, ours)", '',
                  '| lever | warm-up s | s/iteration | vs defaults | peak MB | note |', '|---|---|---|---|---|---|']
        for name, m in d.items():
            ratio = base / m['s_per_iter'] if base and m.get('s_per_iter') else None
            lines.append(f"| {name} | {_fmt(m.get('warmup_s', '-'))} | {_fmt(m.get('s_per_iter', '-'))} | "
                         f"{_fmt(ratio) + 'x' if ratio else '-'} | {_fmt(m.get('peak_mem_mb', '-'))} | "
                         f"{m.get('skipped') or m.get('failed') or ''} |")
        lines.append('')
    lines += ['Logs: `' + str(Path(setup['out']) / 'logs') + '`', '']
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------- driver
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dry-run', action='store_true', help='the same stages on the CPU at tiny sizes')
    parser.add_argument('--out', default=None, help='report, logs and workspace (default: work_dirs/gpu_check'
                                                    '[_dry])')
    parser.add_argument('--budget-s', type=float, default=None,
                        help='seconds for all stages (default: 570 on a GPU, 600 in a dry run)')
    parser.add_argument('--stages', default=None, help='comma-separated subset of ' + ','.join(
        s.name for s in make_stages()))
    parser.add_argument('--device', default=None, help='default: cuda (cpu in a dry run)')
    parser.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16', 'fp32'],
                        help="frozen dtype on the device (the suite's --dtype, the demo's backbone, the benchmarks)")
    parser.add_argument('--tiny', default=os.environ.get('MMSEG_GATE_TINY'),
                        help='prebuilt tiny SD assets (default: $MMSEG_GATE_TINY, else built under OUT/tiny)')
    parser.add_argument('--tiny-dit', default=os.environ.get('MMSEG_GATE_TINY_DIT'),
                        help='prebuilt tiny DiT assets (default: $MMSEG_GATE_TINY_DIT, else beside the tiny SD ones)')
    parser.add_argument('--sd15-assets', default=str(REPO / 'data' / 'sd15_random'),
                        help='SD1.5-shaped random weights for (e), made once (~6 GB)')
    parser.add_argument('--flux-worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = args.device or ('cpu' if args.dry_run else 'cuda')
    if args.budget_s is None:
        args.budget_s = 600.0 if args.dry_run else 570.0
    return parser, args


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    if args.flux_worker:
        flux_worker(args)
        return 0
    import torch
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: no CUDA device is visible (torch {torch.__version__}, CUDA '
                     f'{torch.version.cuda or "not compiled"}); --dry-run runs the same stages on the CPU')
    if not args.dry_run and not args.device.startswith('cuda'):
        parser.error('full sizes need a GPU: use --dry-run for the CPU (tiny sizes)')
    stages = make_stages()
    if args.stages:
        wanted = set(args.stages.split(','))
        unknown = wanted - {s.name for s in stages}
        if unknown:
            parser.error(f'--stages: unknown {sorted(unknown)}; use {[s.name for s in stages]}')
    out = Path(args.out or REPO / 'work_dirs' / ('gpu_check_dry' if args.dry_run else 'gpu_check')).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    env = environment(args.device)
    setup = dict(date=time.strftime('%Y-%m-%d %H:%M:%S'), dry_run=args.dry_run, device=args.device, dtype=args.dtype,
                 budget_s=args.budget_s, out=str(out), command=' '.join(['python', 'tools/gpu_check.py',
                                                                        *(argv if argv is not None else sys.argv[1:])]))
    child_env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'HF_HUB_OFFLINE': os.environ.get('HF_HUB_OFFLINE', '1')}
    check = Check(args, out, Runner(out, child_env))
    print(f"mmseg-gate GPU check{' (dry run)' if args.dry_run else ''}: {args.device} {args.dtype}, budget "
          f"{args.budget_s:.0f} s, out {out}", flush=True)
    t_ws = time.monotonic()
    try:
        if budget.left() > 0:
            check.workspace()
            if not args.stages or {'benchmark', 'levers'} & set(args.stages.split(',')):
                check.start_benchmark_assets()
        setup['workspace_s'] = round(time.monotonic() - t_ws, 1)
    except Exception as error:  # noqa: BLE001
        setup['workspace_error'] = f'{type(error).__name__}: {error}'
    for stage in stages:
        if args.stages and stage.name not in args.stages.split(','):
            stage.status, stage.reason = 'skipped', 'not in --stages'
            continue
        if 'workspace_error' in setup:
            stage.status, stage.reason = 'failed', f"no workspace: {setup['workspace_error']}"
            continue
        left = budget.left()
        if left < stage.min_s:
            stage.status, stage.reason = 'skipped', f'skipped for time ({left:.0f} s left, needs {stage.min_s:.0f} s)'
            print(f'[{stage.letter}] {stage.name}: {stage.reason}', flush=True)
            continue
        stage.given_s = min(stage.dry_limit_s if args.dry_run else stage.limit_s, left)
        print(f'[{stage.letter}] {stage.name}: {stage.title} (at most {stage.given_s:.0f} s) ...', flush=True)
        t0 = time.monotonic()
        try:
            getattr(check, stage.name)(stage, t0 + stage.given_s)
            stage.status = 'ok'
        except StageTimeout as error:
            stage.status, stage.reason = 'timeout', str(error)
        except StageFailed as error:
            stage.status, stage.reason = 'failed', str(error)
        except Exception as error:  # noqa: BLE001  (a bug of this script or of a library: reported, not fatal)
            stage.status, stage.reason = 'failed', f'{type(error).__name__}: {error}\n{traceback.format_exc()[-2000:]}'
        stage.wall_s = time.monotonic() - t0
        print(f'[{stage.letter}] {stage.name}: {stage.status} in {stage.wall_s:.0f} s'
              + (f' - {stage.reason.splitlines()[0][:300]}' if stage.reason else ''), flush=True)
    check.stop_benchmark_assets()  # still writing when (e) was skipped
    setup['total_s'] = time.monotonic() - budget.start
    json_path, md_path = write_report(out, setup, env, stages)
    failed = [s.name for s in stages if s.status in ('failed', 'timeout')]
    print(f"\nreport: {json_path} and {md_path}\nfailed: {', '.join(failed) or 'none'}; skipped for time: "
          f"{', '.join(s.name for s in stages if 'time' in s.reason and s.status == 'skipped') or 'none'}; "
          f"total {setup['total_s']:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
