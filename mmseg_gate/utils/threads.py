"""How many CPU threads torch computes with: the cores this process may use, not the host's.

torch sizes its intra-op pool from the host; on a machine whose cores are shared (an affinity mask, a
job scheduler) more threads than cores oversubscribe them, and every iteration waits for the slowest
thread (the tiny demo: 0.3 s -> 2-8.5 s per iteration beside other jobs). ``OMP_NUM_THREADS`` always wins.

The thread count also changes CPU results: convolution and matmul kernels split their reductions by
thread, so float sums come out in another order, and training amplifies the differences (the demo's
mIoU moved by 4 points between 1 and 2 threads). A run that must repeat bitwise fixes the count.
"""
from __future__ import annotations

import os
from typing import Mapping

import torch

_logged: set[tuple[int, str]] = set()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; all of the host's where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks on this platform
        return os.cpu_count() or 1


def choose_num_threads(environ: Mapping[str, str] | None = None) -> tuple[int, str]:
    """The intra-op thread count to use, and why: ``OMP_NUM_THREADS`` if set, else torch's default capped
    at :func:`available_cpus`."""
    environ = os.environ if environ is None else environ
    value = environ.get('OMP_NUM_THREADS', '').strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f'OMP_NUM_THREADS={value!r} is not a positive whole number: set it to the CPU '
                             'threads to use (e.g. OMP_NUM_THREADS=2) or unset it')
        return n, f'OMP_NUM_THREADS={n}'
    default, cpus = torch.get_num_threads(), available_cpus()
    if default > cpus:
        return cpus, f'the {cpus} CPUs this process may use (torch would take {default}); OMP_NUM_THREADS overrides'
    return default, f"torch's default, within the {cpus} CPUs this process may use; OMP_NUM_THREADS overrides"


def configure_threads(num_threads: int | None = None, reason: str | None = None, log: bool = True) -> int:
    """Set torch's intra-op threads to ``num_threads`` (``None``: :func:`choose_num_threads`) and log the
    choice once per process; returns the count."""
    if num_threads is None:
        num_threads, reason = choose_num_threads()
    if num_threads < 1:
        raise ValueError(f'num_threads={num_threads}: use 1 or more')
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    key = (num_threads, reason or 'requested')
    if log and key not in _logged:
        _logged.add(key)
        from mmengine.logging import print_log
        print_log(f'torch CPU threads: {num_threads} ({key[1]})', 'current')
    return num_threads


__all__ = ['available_cpus', 'choose_num_threads', 'configure_threads']
