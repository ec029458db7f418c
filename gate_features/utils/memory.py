"""CPU memory: freed memory back to the OS; weight copies that leave no file mapping resident."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools

import torch

# glibc raises its mmap threshold up to this as blocks are freed (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit):
# larger blocks always get fresh mappings instead of reusing free heap memory.
GLIBC_MAX_MMAP_THRESHOLD = 32 << 20


def to_channels_last(module: torch.nn.Module) -> None:
    """``module``'s 4-D weights in channels_last, every other tensor copied as it is.

    Why every tensor: a tensor left in the safetensors file mapping keeps the whole mapping, and with it the pages
    of the converted weights, resident (~130 MB for SD's VAE encoder; for SD1.5's UNet and ControlNet,
    ``module.to(memory_format=...)`` gave a 9.2 GB peak, this 7.5 GB, unconverted 6.1 GB: the copy is made while the
    loaded weights still exist).
    """
    for t in itertools.chain(module.parameters(), module.buffers()):
        t.data = t.data.clone(memory_format=torch.channels_last if t.ndim == 4 else torch.contiguous_format)


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (macOS, musl, Windows)."""
    name = ctypes.util.find_library('c')
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_heap_memory() -> bool:
    """Return the C heap's free pages to the OS; ``True`` if the C library could.

    Why: glibc keeps the pages of freed blocks below its mmap threshold (up to 32 MB, i.e. most UNet
    activations) for reuse, but blocks above it (full-resolution VAE activations) are mapped anew.
    Without a trim the next iteration's VAE pass stacks on the hundreds of MB the UNet left in the
    heap (SD1.5, 512x512, 3 branches); a trimmed page costs a page fault when it is used again, so callers trim only where the blocks to come exceed ``GLIBC_MAX_MMAP_THRESHOLD``.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class HeapTrimPolicy:
    """When the extraction hands freed CPU memory back to the OS between its stages.

    Only in passes whose VAE activations exceed glibc's largest mmap threshold: glibc serves such
    blocks with fresh mappings, so they stack on the free heap the previous stage left; smaller ones
    reuse it, and trimming then only costs page faults (the tiny demo's training steps ran ~15%
    slower with trims). Never on GPU.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.active = False  # decided per pass by :meth:`start`

    def start(self, images: torch.Tensor, vae) -> None:
        """Decide for the pass that encodes ``images`` with ``vae``."""
        if not (self.enabled and images.device.type == 'cpu'):
            self.active = False
            return
        activation_bytes = images[:, :1].numel() * vae.config.block_out_channels[0] * vae.dtype.itemsize
        self.active = activation_bytes > GLIBC_MAX_MMAP_THRESHOLD

    def stop(self) -> None:
        self.active = False  # other users of the UNet (the mid-block hook) must not trim

    def release(self, *args) -> None:
        """Between stages (also usable as a forward pre-hook)."""
        if self.active:
            release_free_heap_memory()
