"""Build (once per kind) and install mmcv 2.1.0 with the ops this machine can have.

  python tools/install_mmcv.py                 # MMCV_OPS=auto: decide from the machine
  python tools/install_mmcv.py --ops cuda      # CUDA ops (needs a CUDA toolkit: nvcc, CUDA_HOME)
  python tools/install_mmcv.py --ops cpu       # CPU ops, also on a GPU machine

Why this script: mmcv 2.1.0 has no wheel for recent torch, and its ``setup.py`` builds CUDA ops
whenever ``torch.cuda.is_available()``, which then fails without a CUDA toolkit (pip's CUDA torch
wheels bring none). The GATE configs need no mmcv CUDA op, so a GPU machine without a toolkit gets
CPU ops (the GPU is hidden from the build). pip caches locally built wheels by name and version only,
so this script keeps its own cache, one folder per kind, and never lets pip's cache pick the kind.

Only the standard library and torch are imported: it runs before the rest of the stack is installed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MMCV_VERSION = '2.1.0'
OPS_CHOICES = ('auto', 'cpu', 'cuda')
REBUILD_HINT = 'make mmcv MMCV_OPS=cuda'


@dataclass(frozen=True)
class Machine:
    """What decides the mmcv build: torch's own build and what it can see."""
    torch_version: str                        # without a local label: '2.13.0'
    torch_cuda: str | None                    # torch.version.cuda ('12.8') or None for a CPU torch
    gpu_capability: tuple[int, int] | None    # of the first visible GPU, e.g. (9, 0)
    cuda_home: str | None                     # a CUDA toolkit with nvcc, as torch's cpp_extension finds it


@dataclass(frozen=True)
class MmcvBuild:
    """How to build mmcv: its kind, the build environment and the cache folder's name."""
    kind: str                                 # 'cpu' or 'cuda'
    tag: str                                  # cache folder, e.g. 'mmcv-2.1.0-torch2.13.0-cpu'
    reason: str                               # the one line printed to the user
    env: dict[str, str] = field(default_factory=dict)


def plan_build(machine: Machine, requested: str = 'auto', arch_list: str | None = None) -> MmcvBuild:
    """Decide CPU or CUDA ops; raise SystemExit with the fix when CUDA ops are asked for but impossible.

    ``arch_list`` is ``TORCH_CUDA_ARCH_LIST`` as the user set it (used as is, e.g. to build for several GPUs).
    """
    if requested not in OPS_CHOICES:
        raise SystemExit(f'MMCV_OPS={requested!r} is not one of {", ".join(OPS_CHOICES)}')
    base = f'mmcv-{MMCV_VERSION}-torch{machine.torch_version}'
    cpu_env = {'MMCV_WITH_OPS': '1', 'FORCE_CUDA': '0', 'CUDA_VISIBLE_DEVICES': ''}  # hide the GPU from setup.py
    if requested == 'cpu':
        return MmcvBuild('cpu', f'{base}-cpu', 'mmcv: CPU ops (MMCV_OPS=cpu)', cpu_env)
    if requested == 'auto' and machine.gpu_capability is None:
        return MmcvBuild('cpu', f'{base}-cpu', 'mmcv: CPU ops (no GPU visible)', cpu_env)
    if requested == 'auto' and machine.cuda_home is None:
        return MmcvBuild('cpu', f'{base}-cpu',
                         f'mmcv: CPU ops (GPU found but no CUDA toolkit: nvcc / CUDA_HOME): enough for '
                         f'the GATE configs; for CUDA ops install a CUDA {machine.torch_cuda} toolkit and run '
                         f'`{REBUILD_HINT}`', cpu_env)
    # CUDA ops: asked for, or auto with a GPU and a toolkit
    if machine.torch_cuda is None:
        raise SystemExit(f'MMCV_OPS=cuda needs a CUDA build of torch, but torch {machine.torch_version} is a CPU '
                         'build: install a CUDA torch into .venv first (see the README), or use MMCV_OPS=cpu')
    if machine.cuda_home is None:
        raise SystemExit(f'MMCV_OPS=cuda needs a CUDA toolkit (nvcc) matching torch\'s CUDA {machine.torch_cuda}, '
                         'and none was found: install one and set CUDA_HOME, or use MMCV_OPS=cpu')
    if not arch_list:
        if machine.gpu_capability is None:
            raise SystemExit('MMCV_OPS=cuda without a visible GPU: set TORCH_CUDA_ARCH_LIST (e.g. "8.6;9.0") '
                             'to say which GPUs to build for')
        arch_list = '{}.{}'.format(*machine.gpu_capability)
    arch_tag = arch_list.replace(';', '_').replace(' ', '_').replace('+', '')
    return MmcvBuild('cuda', f'{base}-cu{machine.torch_cuda}-sm{arch_tag}',
                     f'mmcv: CUDA ops for CUDA {machine.torch_cuda}, GPU architecture {arch_list}',
                     {'MMCV_WITH_OPS': '1', 'FORCE_CUDA': '1', 'TORCH_CUDA_ARCH_LIST': arch_list})


def this_machine() -> Machine:
    """Read the facts from the installed torch (imported here: the script runs in the target venv)."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME
    capability = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
    cuda_home = CUDA_HOME if CUDA_HOME and Path(CUDA_HOME, 'bin', 'nvcc').exists() else None
    return Machine(torch.__version__.split('+')[0], torch.version.cuda, capability, cuda_home)


def installed_mmcv_kind(python: str = sys.executable) -> str | None:
    """'cpu' or 'cuda' for an importable mmcv 2.1.0 with ops, None otherwise (absent, other version, broken)."""
    probe = ('import mmcv, mmcv.ops; from mmcv.ops import get_compiling_cuda_version as v; '
             f'assert mmcv.__version__ == {MMCV_VERSION!r}; print("cpu" if v() == "not available" else "cuda")')
    done = subprocess.run([python, '-c', probe], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def default_cache() -> Path:
    return Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'mmseg-gate' / 'wheels'


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, '-m', 'pip', *args], check=True, env=env)


def build_wheel(build: MmcvBuild, cache: Path, jobs: str) -> Path:
    """Build mmcv's wheel into ``cache/<tag>/`` (once) and return it."""
    folder = cache / build.tag
    wheels = sorted(folder.glob('mmcv-*.whl'))
    if wheels:
        print(f'mmcv: reusing {wheels[-1]}')
        return wheels[-1]
    # mmcv's setup.py imports pkg_resources (gone from setuptools 70); `make install` restores the locked one after
    _pip('install', '-q', 'setuptools<70', 'wheel')
    env = {**os.environ, 'MAX_JOBS': jobs, **build.env}
    print(f'mmcv: compiling {MMCV_VERSION} from source (about 10 minutes on 2 cores, once per kind)', flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # --no-cache-dir: pip's wheel cache does not know the kind, so it must neither serve nor keep this build
        _pip('wheel', '--no-deps', '--no-build-isolation', '--no-cache-dir', '-w', tmp,
             f'mmcv=={MMCV_VERSION}', env=env)
        built = next(Path(tmp).glob('mmcv-*.whl'))
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), folder / built.name)
    return folder / built.name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ops', default=os.environ.get('MMCV_OPS') or 'auto', choices=OPS_CHOICES,
                        help='which ops to build (default: $MMCV_OPS or auto)')
    parser.add_argument('--cache', type=Path, default=default_cache(), help='wheel cache (default: %(default)s)')
    parser.add_argument('--jobs', default=os.environ.get('MAX_JOBS', str(os.cpu_count() or 2)))
    args = parser.parse_args(argv)
    build = plan_build(this_machine(), args.ops, os.environ.get('TORCH_CUDA_ARCH_LIST'))
    have = installed_mmcv_kind()
    if have == build.kind:
        print(f'mmcv: {MMCV_VERSION} with {have.upper()} ops already installed')
        return
    print(build.reason, flush=True)
    wheel = build_wheel(build, args.cache, args.jobs)
    _pip('install', '-q', '--no-deps', '--force-reinstall', str(wheel))
    got = installed_mmcv_kind()
    if got != build.kind:
        raise SystemExit(f'mmcv: installed {wheel.name} but `import mmcv.ops` gives {got!r} ops, not {build.kind}: '
                         f'remove {wheel.parent} and run `make mmcv MMCV_OPS={build.kind}` again')
    print(f'mmcv: {MMCV_VERSION} with {got.upper()} ops installed')


if __name__ == '__main__':
    main()
