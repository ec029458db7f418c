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
        return Result('WARN', name, f'{len(missing)} of {len(paths)} not found from {Path.cwd()}: '
                      + ', '.join(missing),
                      'README "Reproducing GATE" says what to download, or point the config elsewhere with '
                      '--cfg-options (e.g. sd_path=...)')
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
                                                          'safetensors', 'numpy', 'mmseg-gate')]
    return info, result


def run_checks(configs: tuple[str, ...] = DEFAULT_CONFIGS) -> tuple[list[tuple[str, str]], list[Result]]:
    info, report = environment_report()
    checks: list[Callable[[], Result]] = [check_lock, check_peft, check_numpy, check_mmcv_ops, check_accelerator,
                                          check_package_imports]
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
