"""Let mmengine 0.10.7 load its own Runner checkpoints under torch >= 2.6, safely.

torch.load defaults to ``weights_only=True`` since torch 2.6 and mmengine calls it without the
argument, so ``--resume`` and ``load_from`` fail on what a Runner checkpoint pickles besides
tensors: MessageHub's HistoryBuffers (with their statistics methods, pickled as
``getattr(HistoryBuffer, 'min')``) and numpy arrays/scalars. Rather than turning the safe loader off
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), mmengine's loader for local files is replaced, through its
own registry, by one that keeps ``weights_only=True`` and allows exactly those classes, only while
it loads.
"""
from __future__ import annotations

import collections
import os
import os.path as osp
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def runner_checkpoint_globals() -> list:
    """The non-tensor globals of an mmengine Runner checkpoint."""
    from mmengine.logging import HistoryBuffer
    from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in ('float16', 'float32', 'float64', 'int8', 'int16', 'int32', 'int64',
                                           'uint8', 'uint16', 'uint32', 'uint64', 'bool')]
    allowed = [HistoryBuffer, collections.OrderedDict, collections.defaultdict, np.ndarray, np.dtype, *dtypes,
               getattr]  # getattr(HistoryBuffer, 'mean') & co: results are not callable by the unpickler
    for name, fn in (('_reconstruct', _reconstruct), ('scalar', scalar)):  # numpy 2 pickles numpy._core paths
        allowed += [(fn, f'numpy._core.multiarray.{name}'), (fn, f'numpy.core.multiarray.{name}')]
    return allowed


def load_runner_checkpoint(filename: str, map_location: Any = None) -> dict:
    """``torch.load(weights_only=True)`` of a local mmengine checkpoint."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    with torch.serialization.safe_globals(runner_checkpoint_globals()):
        try:
            return torch.load(filename, map_location=map_location, weights_only=True)
        except (RuntimeError, OSError, EOFError) as e:  # torch names neither the file nor the cause
            reason = unreadable_reason(filename)
            if reason is None:
                raise
            raise RuntimeError(f'checkpoint {filename} cannot be read: {reason}. A kill or a full disk while it was '
                               'written? --resume skips it for the newest readable checkpoint of the work dir; with '
                               'load_from, name another file.') from e


def unreadable_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete checkpoint (``None`` when it is): a folder (deepspeed) passes; a torch zip
    archive must have its central directory and every record's CRC right, which a cut-short file has not."""
    path = Path(path)
    if path.is_dir():
        return None
    if not path.is_file():
        return 'it does not exist'
    if path.stat().st_size == 0:
        return 'it is empty'
    with open(path, 'rb') as f:
        legacy = f.read(1) == b'\x80'
    if legacy and not zipfile.is_zipfile(path):
        return None  # torch's legacy (pre-1.6) pickle format: no archive to check
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f'it is cut short or not a checkpoint ({e})'
    return None if bad is None else f'its record {bad} is corrupt'


def allow_mmengine_checkpoints() -> None:
    """Make mmengine load local checkpoints with :func:`load_runner_checkpoint`."""
    from mmengine.runner import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_runner_checkpoint, force=True)
