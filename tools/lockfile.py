"""The lock of the verified stack: write it from an installed environment, or check one against it.

  python tools/lockfile.py check requirements/lock.txt   # exit 1 with each difference (make install runs it)
  python tools/lockfile.py write requirements/lock.txt   # `make lock` runs it in a freshly resolved venv

Standard library only, and not inside the ``mmseg_gate`` package: it must run where the stack is broken
(importing ``mmseg_gate`` imports mmseg, mmcv, diffusers...).
"""
from __future__ import annotations

import argparse
import re
import sys
from datetime import date
from importlib import metadata
from pathlib import Path

# not part of the stack: the project itself (editable) and the installer
OUTSIDE_LOCK = frozenset({'mmseg-gate', 'pip'})


def normalize(name: str) -> str:
    """PEP 503 name: 'Foo_bar.baz' -> 'foo-bar-baz'."""
    return re.sub(r'[-_.]+', '-', name).lower()


def public_version(version: str) -> str:
    """Without the local label, so that torch 2.13.0+cpu and 2.13.0+cu128 are both 2.13.0."""
    return version.split('+')[0]


def installed_versions() -> dict[str, str]:
    """Every distribution of this interpreter's environment, by normalised name (first one found wins).

    Folders of vendored packages are skipped: importing pkg_resources puts setuptools' ``_vendor`` on
    ``sys.path``, whose metadata (jaraco.*, autocommand...) pip never installed."""
    found: dict[str, str] = {}
    paths = [p for p in sys.path if '_vendor' not in Path(p).parts]
    for dist in metadata.distributions(path=paths):
        name = dist.metadata['Name']
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


def read_lock(path: str | Path) -> dict[str, str]:
    """``name==version`` lines of a lock or constraints file (comments and blank lines ignored)."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r'^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)', line)
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


def torch_runtime_packages(installed: dict[str, str]) -> set[str]:
    """What only a CUDA (or ROCm) torch build brings (nvidia-*, triton): a CPU-made lock cannot list them."""
    if 'torch' not in installed:
        return set()
    requires = metadata.requires('torch') or []
    return {normalize(re.split(r'[\s;<>=!~\[(]', r, maxsplit=1)[0]) for r in requires}


def lock_differences(installed: dict[str, str], lock: dict[str, str],
                     runtime_extras: set[str] = frozenset()) -> list[str]:
    """One line per package that is not as the lock says (installed-only packages of torch's runtime excepted)."""
    problems = []
    for name in sorted(set(installed) | set(lock)):
        if name in OUTSIDE_LOCK:
            continue
        have, want = installed.get(name), lock.get(name)
        if want is None:
            if name not in runtime_extras:
                problems.append(f'{name} {have} is installed but not in the lock')
        elif have is None:
            problems.append(f'{name} is not installed (lock: {want})')
        elif public_version(have) != public_version(want):
            problems.append(f'{name} {have} installed, lock has {want}')
    return problems


def lock_text(installed: dict[str, str]) -> str:
    lines = [f'{name}=={public_version(version)}' for name, version in sorted(installed.items())
             if name not in OUTSIDE_LOCK]
    header = (f'# The verified stack, resolved {date.today().isoformat()} with Python '
              f'{sys.version_info.major}.{sys.version_info.minor} by `make lock` (do not edit by hand).\n'
              '# `make install` passes it to pip as constraints (-c). A change lands only after\n'
              '# `rm -rf .venv && make install && make test` passed with it. No local labels: torch==2.13.0\n'
              '# matches the CPU and the CUDA builds.\n')
    return header + '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('action', choices=('check', 'write'))
    parser.add_argument('lock', type=Path)
    args = parser.parse_args(argv)
    installed = installed_versions()
    if args.action == 'write':
        args.lock.parent.mkdir(parents=True, exist_ok=True)
        args.lock.write_text(lock_text(installed))
        print(f'wrote {args.lock}: {len(installed) - len(OUTSIDE_LOCK & set(installed))} packages')
        return 0
    problems = lock_differences(installed, read_lock(args.lock), torch_runtime_packages(installed))
    for problem in problems:
        print(f'lock: {problem}', file=sys.stderr)
    if problems:
        print(f'lock: this environment differs from {args.lock}: re-sync it with `pip install -c {args.lock} '
              '-r requirements.txt` and uninstall what is not in the lock', file=sys.stderr)
        return 1
    print(f'lock: all {len(read_lock(args.lock))} packages as in {args.lock}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
