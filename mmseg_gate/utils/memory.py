"""Give memory that PyTorch freed on the CPU back to the operating system."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc >= 2.33): heap statistics in bytes."""
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks', 'fordblks',
        'keepcost')]


@functools.lru_cache(maxsize=None)
def _libc():
    """The C library if it is glibc (has ``malloc_trim``), else ``None`` (macOS, musl, Windows)."""
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, 'malloc_trim') else None
    except OSError:
        return None


def free_heap_bytes() -> int | None:
    """Bytes the C heap holds free (``mallinfo2().fordblks``), ``None`` where glibc cannot say."""
    libc = _libc()
    if libc is None or not hasattr(libc, 'mallinfo2'):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().fordblks)


def release_free_heap_memory(min_free_bytes: int = 64 << 20) -> bool:
    """Return the C heap's free pages to the OS if it holds at least ``min_free_bytes`` free.

    Returns ``True`` if it trimmed. Why: glibc keeps the pages of freed blocks below its mmap threshold
    (up to 32 MB, i.e. most UNet activations) for reuse, but blocks above it (full-resolution VAE
    activations) are mapped anew. Without a trim the next iteration's VAE pass stacks on the ~0.4 GB
    the UNet left in the heap (SD1.5, 512x512, 3 branches). Trimmed pages cost a page fault each when
    used again, so a trim of a few MB (small models, small crops) costs more time than it saves
    memory: below ``min_free_bytes`` it is skipped.
    """
    libc = _libc()
    if libc is None:
        return False
    free = free_heap_bytes()
    if free is not None and free < min_free_bytes:
        return False
    libc.malloc_trim(0)
    return True
