"""Fail before the first iteration when a model on a GPU needs mmcv CUDA ops that this mmcv lacks.

`make install` builds mmcv with CPU ops on GPU machines without a CUDA toolkit (enough for the GATE
configs). A head or loss that calls an mmcv kernel on CUDA tensors would otherwise fail deep inside
the first step with "implementation for device cuda:0 not found".
"""
from __future__ import annotations

import torch
from torch import nn

REBUILD = 'make mmcv MMCV_OPS=cuda'


def mmcv_has_cuda_ops() -> bool:
    """Whether the installed mmcv's ops were compiled with CUDA ("not available" for a CPU build)."""
    from mmcv.ops import get_compiling_cuda_version
    return get_compiling_cuda_version() != 'not available'


def modules_needing_cuda_ops(model: nn.Module) -> list[str]:
    """Names of modules that run mmcv kernels on CUDA tensors: mmcv.ops modules (CCHead's criss-cross
    attention, PSAHead's mask, deformable convs...) and mmseg's FocalLoss (mmcv's sigmoid_focal_loss on CUDA)."""
    from mmseg.models.losses import FocalLoss
    return [name or type(model).__name__ for name, module in model.named_modules()
            if type(module).__module__.startswith('mmcv.ops') or isinstance(module, FocalLoss)]


def check_mmcv_cuda_ops(model: nn.Module, device: torch.device | str | None = None) -> None:
    """Raise with the rebuild command if ``model`` (on ``device``, default: its parameters') needs missing ops."""
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    if torch.device(device).type != 'cuda' or mmcv_has_cuda_ops():
        return
    needing = modules_needing_cuda_ops(model)
    if needing:
        shown = ', '.join(needing[:5]) + (f' and {len(needing) - 5} more' if len(needing) > 5 else '')
        raise RuntimeError(f'{shown} run(s) mmcv ops on the GPU, but the installed mmcv was built with CPU ops '
                           f'only: install a CUDA toolkit matching torch\'s CUDA {torch.version.cuda} and run '
                           f'`{REBUILD}`, or use a head/loss without mmcv ops')
