"""torchrun on machines without CUDA (CPU CI, laptops).

mmengine's launcher calls ``torch.cuda.set_device`` and wraps the model with ``device_ids=[rank]``,
both GPU-only. Here the process group is initialised with gloo first (mmengine then uses it as it
is) and DDP is told the model lives on the CPU.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def init_cpu_distributed(cfg) -> None:
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'gloo')
        dist.init_process_group('gloo' if backend == 'nccl' else backend)  # nccl needs GPUs
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                                     find_unused_parameters=cfg.get('find_unused_parameters', False))
