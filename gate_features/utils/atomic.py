"""Files that outlive a run are written whole or not at all: to a temporary file in the same folder, flushed to
disk, then renamed into place (``os.replace`` is atomic on POSIX and Windows within one file system).

A kill or a full disk during the write leaves the previous file untouched and at most a ``.<name>.tmp-*`` file
beside it, never a half-written file under the real name.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; once the block ends without error, the file written there is
    fsynced and renamed to ``path``. On error (or a kill) ``path`` keeps its old content."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # same suffix as the real name: writers that check it (save_lora_weights, safetensors) accept the temporary
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.tmp-', suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = 'w', **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` whose content replaces ``path`` only once the block has ended without error."""
    if not mode.startswith('w'):
        raise ValueError(f'atomic_open writes whole files: mode must start with "w", got {mode!r}')
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, 'wb') as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, 'w') as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, value: Any, **dump_kwargs: Any) -> None:
    with atomic_open(path, 'w') as f:
        json.dump(value, f, **dump_kwargs)


def atomic_save(save: Callable[[str], Any], path: str | os.PathLike) -> None:
    """Run a writer that takes a file name (``safetensors.torch.save_file``, ``torch.save``,
    ``save_pretrained``-style functions) on a temporary name and rename the result into place."""
    with atomic_path(path) as tmp:
        save(tmp)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (a power loss right after it must not bring the old name back)."""
    if os.name != 'posix':
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def leftover_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files a killed writer left in ``folder`` (safe to delete)."""
    return sorted(p for p in Path(folder).glob('.*.tmp-*') if p.is_file())
