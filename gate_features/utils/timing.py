"""Per-stage wall time, synchronised on CUDA so asynchronous kernels are charged to the right stage."""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch


class StageTimer:
    def __init__(self, device: torch.device | str = 'cpu') -> None:
        self.sync = torch.device(device).type == 'cuda'
        self.ms: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.ms[stage] += (time.perf_counter() - start) * 1000


def no_timer(stage: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()
