"""The environment doctor: mmseg's environment report, then the checks that catch a broken install.

  python tools/collect_env.py            # or: make doctor
  python tools/collect_env.py --configs configs/gate_ade20k.py configs/sdxl/gate_sdxl_ade20k.py

Each check prints OK, WARN or FAIL with a one-line fix; the exit code is 1 when any check FAILs.
Paste the whole output into bug reports. Not part of the ``mmseg_gate`` package on purpose: it has to run
where that package cannot even be imported, so every check imports what it needs itself.
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import traceback
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lockfile import installed_versions, lock_differences, read_lock, torch_runtime_packages  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def package_module(name: str):
    """A module of ``mmseg_gate/utils`` loaded by its path, without importing the package (which may be
    what is broken); ``None`` outside a clone."""
    path = REPO / 'mmseg_gate' / 'utils' / f'{name}.py'
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f'_doctor_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_quiet = package_module('quiet')
if _quiet is not None:  # before mmseg's report imports transformers (and torchao): its known harmless messages
    _quiet.quiet_import_noise()
LOCK = REPO / 'requirements' / 'lock.txt'
DEFAULT_CONFIGS = ('configs/gate_ade20k.py', 'configs/gate_cityscapes.py')
RESYNC = f'pip install -c {LOCK.relative_to(REPO)} -r requirements.txt (in the repository), or make install'


@dataclass
class Result:
    status: str  # 'OK', 'WARN' or 'FAIL'
    name: str
    detail: str
    fix: str = ''


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """'0.21.2' -> (0, 21, 2), '2.4.0rc1' -> (2, 4, 0): enough to order the releases compared here."""
    return tuple(int(re.match(r'\d+', part).group()) for part in version.split('+')[0].split('.')[:3]
                 if re.match(r'\d+', part))


def check_lock(lock: Path = LOCK) -> Result:
    if not lock.exists():
        return Result('WARN', 'lock', f'no lock at {lock} (installed outside a clone): versions not compared')
    installed = installed_versions()
    problems = lock_differences(installed, read_lock(lock), torch_runtime_packages(installed))
    if problems:
        shown = '; '.join(problems[:6]) + (f'; ... {len(problems) - 6} more' if len(problems) > 6 else '')
        return Result('FAIL', 'lock', f'{len(problems)} package(s) differ from the verified stack: {shown}', RESYNC)
    return Result('OK', 'lock', f'all {len(read_lock(lock))} packages as in {lock.name}')


def transformers_min_peft() -> str | None:
    """The peft version the installed transformers demands, read from its source (no import needed)."""
    spec = importlib.util.find_spec('transformers')
    source = Path(spec.origin).parent / 'integrations' / 'peft.py' if spec and spec.origin else None
    if source is None or not source.exists():
        return None
    match = re.search(r'^MIN_PEFT_VERSION\s*=\s*["\']([^"\']+)', source.read_text(), re.M)
    return match.group(1) if match else None


def check_peft() -> Result:
    transformers, peft = _version('transformers'), _version('peft')
    if transformers is None or peft is None:
        return Result('FAIL', 'peft/transformers', f'transformers {transformers}, peft {peft}: both are needed',
                      RESYNC)
    wanted = transformers_min_peft()
    if wanted and _release(peft) < _release(wanted):
        return Result('FAIL', 'peft/transformers',
                      f'transformers {transformers} requires peft >= {wanted}, peft {peft} is installed: every LoRA '
                      'load fails ("The version of PEFT you are using is not compatible")',
                      f'pip install -c {LOCK.relative_to(REPO)} transformers peft (the verified pair)')
    return Result('OK', 'peft/transformers', f'transformers {transformers} with peft {peft}'
                  + (f' (needs >= {wanted})' if wanted else ''))


def check_numpy() -> Result:
    numpy, scripts = _version('numpy'), _version('cityscapesscripts')
    if numpy is None:
        return Result('FAIL', 'numpy', 'numpy is not installed', RESYNC)
    if _release(numpy) >= (2, 4):
        status = 'FAIL' if scripts else 'WARN'
        return Result(status, 'numpy', f'numpy {numpy}: cityscapesscripts (CityscapesMetric) calls np.in1d, '
                      'removed in numpy 2.4', 'pip install "numpy>=2,<2.4"')
    return Result('OK', 'numpy', f'numpy {numpy} (< 2.4, as cityscapesscripts needs)')


def check_albumentations() -> Result:
    """mmseg's NYU depth pipeline (configs/depth/) runs albumentations through its Albu transform."""
    fix = f'pip install -c {LOCK.relative_to(REPO)} albumentations'
    version = _version('albumentations')
    if version is None:
        return Result('WARN', 'albumentations', "not installed: mmseg's NYU depth pipeline (Albu, configs/depth/) "
                      'fails', fix)
    try:
        import numpy as np
        from mmseg.datasets.transforms import Albu
        Albu(transforms=[dict(type=t) for t in ('RandomBrightnessContrast', 'RandomGamma', 'HueSaturationValue')])(
            dict(img=np.zeros((8, 8, 3), np.uint8)))
    except Exception as error:  # noqa: BLE001
        return Result('FAIL', 'albumentations', f"albumentations {version}: mmseg's Albu fails: "
                      f'{type(error).__name__}: {error}', fix)
    return Result('OK', 'albumentations', f"albumentations {version} (mmseg's NYU Albu transforms run)")

def check_mmcv_ops() -> Result:
    try:
        import mmcv
        import torch
        from mmcv.ops import get_compiling_cuda_version
    except Exception as error:  # noqa: BLE001 (any import failure is the finding)
        return Result('FAIL', 'mmcv ops', f'`import mmcv.ops` fails: {type(error).__name__}: {error}',
                      'make mmcv (builds mmcv 2.1.0 against the installed torch)')
    cuda_ops = get_compiling_cuda_version() != 'not available'
    kind = f'CUDA {get_compiling_cuda_version()}' if cuda_ops else 'CPU'
    if torch.cuda.is_available() and not cuda_ops:
        return Result('WARN', 'mmcv ops', f'mmcv {mmcv.__version__} has CPU ops only, on a GPU machine: enough for '
                      'the GATE configs; FocalLoss on CUDA tensors, CCHead, PSAHead, DCN need CUDA ops',
                      'with a CUDA toolkit installed: make mmcv MMCV_OPS=cuda')
    return Result('OK', 'mmcv ops', f'mmcv {mmcv.__version__} with {kind} ops')


def check_accelerator() -> Result:
    try:
        import torch
    except Exception as error:  # noqa: BLE001
        return Result('FAIL', 'torch', f'`import torch` fails: {error}', 'make install')
    if not torch.cuda.is_available():
        built = f'CUDA {torch.version.cuda} build' if torch.version.cuda else 'CPU build'
        return Result('WARN', 'GPU', f'torch {torch.__version__} ({built}) sees no CUDA GPU: training and tests '
                      "run on the CPU (use the backbone's dtype='fp32' there)",
                      'on a GPU machine install a CUDA torch into .venv first (README, Install)')
    names = ', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    if not torch.cuda.is_bf16_supported():
        return Result('WARN', 'GPU', f'{names}: no bf16, the configs\' default dtype',
                      "--cfg-options model.backbone.dtype=fp16")
    return Result('OK', 'GPU', f'{names}, CUDA {torch.version.cuda}, bf16 supported')


def check_threads() -> Result:
    threads = package_module('threads')
    if threads is None:
        return Result('WARN', 'CPU threads', 'not checked (no mmseg_gate/utils/threads.py)')
    try:
        import torch
        chosen, why = threads.choose_num_threads()
    except Exception as error:  # noqa: BLE001 (a bad OMP_NUM_THREADS is the finding)
        return Result('FAIL', 'CPU threads', str(error), 'export OMP_NUM_THREADS=2 (the threads to use), or unset it')
    default = torch.get_num_threads()
    detail = f'the tools use {chosen} ({why})'
    if chosen < default:
        return Result('WARN', 'CPU threads', f'{detail}; torch alone would take {default} and oversubscribe them',
                      'use tools/train.py and tools/test.py (they set it), or torch.set_num_threads in own scripts')
    return Result('OK', 'CPU threads', detail)


def check_package_imports() -> Result:
    try:
        import mmseg_gate
    except Exception as error:  # noqa: BLE001
        last = traceback.format_exception_only(type(error), error)[-1].strip()
        return Result('FAIL', 'mmseg_gate', f'`import mmseg_gate` fails: {last}', RESYNC)
    return Result('OK', 'mmseg_gate', f'mmseg_gate {mmseg_gate.__version__} imports and registers its modules')


def weight_paths(backbone: dict) -> list[str]:
    """The local files/folders a backbone config loads: pretrained, unet/vae, LoRA, ControlNet, IP-Adapter paths."""
    found = []

    def walk(node, key=''):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and key in ('pretrained', 'path', 'unet', 'vae', 'image_encoder'):
            found.append(node)
    walk(backbone)
    return list(dict.fromkeys(found))


def readme_sources(readme: Path = REPO / 'README.md') -> list[tuple[str, str, str]]:
    """What the README's "Reproducing GATE" steps write: (path, step, command) for every ``--local-dir`` (the
    downloads), ``--work-dir`` and ``--out`` of its commands, so a missing file is named with the step that
    makes it."""
    if not readme.exists():
        return []
    text = readme.read_text().split('## Reproducing GATE', 1)[-1].split('\n## ', 1)[0]
    sources, step = [], 'Reproducing GATE'
    for line in text.replace('\\\n', ' ').splitlines():
        heading = re.match(r'\s*(\d+)\. \*\*(.+?)\*\*', line)
        if heading:
            step = f'"Reproducing GATE" step {heading.group(1)} ({heading.group(2).rstrip(":")})'
        for flag in ('--local-dir', '--work-dir', '--out'):
            for path in re.findall(rf'{flag} (\S+)', line):
                sources.append((path.rstrip('/'), step, ' '.join(line.split())))
    return sources


def how_to_make(path: str, sources: list[tuple[str, str, str]]) -> str:
    """The README step (and its command) that writes ``path``; the Cityscapes files are the ADE20K ones
    with ``cityscapes`` in the names, as the README says."""
    for name, swap in ((path, None), (path.replace('cityscapes', 'ade20k'), ('ade20k', 'cityscapes'))):
        for made, step, command in sources:
            if name == made or name.startswith(made + '/'):
                command = command.replace(*swap) if swap else command
                return f'README {step}: `{command}`'
    return 'not made by the README\'s recipe: docs/models.md names the download of each model family'


def check_weights(config: str) -> Result:
    name = f'weights of {config}'
    try:
        from mmengine.config import Config
        cfg = Config.fromfile(str(REPO / config) if not Path(config).exists() else config,
                              import_custom_modules=False)
    except Exception as error:  # noqa: BLE001
        return Result('FAIL', name, f'the config does not load: {type(error).__name__}: {error}', RESYNC)
    paths = weight_paths(cfg.model.get('backbone', {}).to_dict() if cfg.model.get('backbone') else {})
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        sources = readme_sources()
        return Result('WARN', name, f'{len(missing)} of {len(paths)} not found from {Path.cwd()}:'
                      + ''.join(f'\n         {p}: {how_to_make(p, sources)}' for p in missing),
                      'make each as its line says, or point the config elsewhere with --cfg-options '
                      '(e.g. sd_path=...)')
    return Result('OK', name, f'all {len(paths)} present')


def environment_report() -> tuple[list[tuple[str, str]], Result]:
    """mmseg's collect_env (system, torch, CUDA, mmcv, mmseg...) plus the diffusion stack's versions."""
    try:
        from mmseg.utils import collect_env
        info = list(collect_env().items())
        result = Result('OK', 'mmseg collect_env', 'ran')
    except Exception as error:  # noqa: BLE001
        info, result = [], Result('FAIL', 'mmseg collect_env', f'{type(error).__name__}: {error}', RESYNC)
    info += [(p, _version(p) or 'not installed') for p in ('diffusers', 'transformers', 'peft', 'accelerate',
                                                          'safetensors', 'numpy', 'albumentations', 'mmseg-gate')]
    return info, result


def run_checks(configs: tuple[str, ...] = DEFAULT_CONFIGS) -> tuple[list[tuple[str, str]], list[Result]]:
    info, report = environment_report()
    checks: list[Callable[[], Result]] = [check_lock, check_peft, check_numpy, check_mmcv_ops, check_accelerator,
                                          check_threads, check_albumentations, check_package_imports]
    results = [report] + [check() for check in checks] + [check_weights(c) for c in configs]
    return info, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--configs', nargs='*', default=DEFAULT_CONFIGS,
                        help='configs whose weight paths to look for, from the current folder (default: %(default)s)')
    args = parser.parse_args(argv)
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')  # mmengine's, once per import
    info, results = run_checks(tuple(args.configs))
    for key, value in info:
        print(f'{key}: {value}')
    print('\nChecks:')
    for r in results:
        print(f'[{r.status:^4}] {r.name}: {r.detail}' + (f'\n       fix: {r.fix}' if r.fix and r.status != 'OK' else ''))
    failed = [r.name for r in results if r.status == 'FAIL']
    print(f'\n{len(failed)} check(s) failed' + (f': {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
