"""Let mmengine 0.10.7 load its own Runner checkpoints under torch >= 2.6.

torch.load defaults to ``weights_only=True`` since torch 2.6, and mmengine calls it without the
argument, so ``--resume`` and ``load_from`` fail on the pickled MessageHub/HistoryBuffer and numpy
values a Runner checkpoint holds. Instead of turning the safe loader off, the few classes those
checkpoints need are added to torch's allow-list when mmseg_gate is imported.
"""
from __future__ import annotations

import collections

import numpy as np
import torch


def _numpy_globals() -> list:
    from numpy.core.multiarray import _reconstruct, scalar  # noqa: F401  (numpy 2: aliases of numpy._core)
    dtypes = [type(np.dtype(t)) for t in ('float16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64',
                                           'uint8', 'uint16', 'uint32', 'uint64', 'bool')]
    return [np.ndarray, np.dtype, _reconstruct, scalar, *dtypes]


def allow_mmengine_checkpoints() -> None:
    """Register the classes of mmengine Runner checkpoints as safe for ``torch.load``."""
    from mmengine.logging import HistoryBuffer, MessageHub
    from mmengine.config import ConfigDict
    import numpy.core.multiarray as ma
    safe = [HistoryBuffer, MessageHub, ConfigDict, collections.OrderedDict, collections.defaultdict,
            *_numpy_globals()]
    # numpy 2 pickles these under numpy._core; register both spellings
    for name in ('_reconstruct', 'scalar'):
        fn = getattr(ma, name)
        safe.append((fn, f'numpy._core.multiarray.{name}'))
        safe.append((fn, f'numpy.core.multiarray.{name}'))
    torch.serialization.add_safe_globals(safe)
