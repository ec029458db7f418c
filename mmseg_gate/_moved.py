"""Old import paths of the code that moved to :mod:`gate_features` (DESIGN.md, "two layers").

``alias(__name__, 'gate_features.x')`` in a module left at the old path makes that name the moved module
itself (``sys.modules``), not a copy: ``mmseg_gate.models.stable_diffusion.FrozenStableDiffusion is
gate_features.frozen_stack.FrozenStableDiffusion``, and a test's ``monkeypatch.setattr`` on the old name reaches
the code that runs. A package's submodules are aliased too (``mmseg_gate.models.families.flux``).
"""
from __future__ import annotations

import importlib
import pkgutil
import sys


def alias(old: str, new: str) -> None:
    module = importlib.import_module(new)
    sys.modules[old] = module
    for info in pkgutil.iter_modules(getattr(module, '__path__', [])):
        sys.modules[f'{old}.{info.name}'] = importlib.import_module(f'{new}.{info.name}')
