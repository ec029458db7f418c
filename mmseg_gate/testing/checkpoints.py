"""Two Runner checkpoints compared leaf by leaf: the kill-and-resume tests and ``tools/gpu_check.py``'s stage (d)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch


def leaves(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, leaf)`` pairs of nested dicts, lists and tuples (a checkpoint part)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, f'{prefix}.{k}')
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from leaves(v, f'{prefix}.{i}')
    else:
        yield prefix, obj


def checkpoint_differences(a: Path, b: Path) -> dict:
    """``{part: dict(differ, tensors, max_abs, first)}`` of the state dict and optimizer state of two Runner
    checkpoints: ``differ`` counts the tensors and other entries (e.g. learning rates) that differ, -1 when the
    keys differ; ``0`` everywhere means bitwise equal."""
    from ..checkpoint_compat import load_runner_checkpoint
    ca, cb = (load_runner_checkpoint(str(p), map_location='cpu') for p in (a, b))
    out = {}
    for part in ('state_dict', 'optimizer'):
        la, lb = dict(leaves(ca[part], part)), dict(leaves(cb[part], part))
        if la.keys() != lb.keys():
            out[part] = dict(differ=-1, tensors=len(la), max_abs=None, note='different keys')
            continue
        tensors = [k for k in la if torch.is_tensor(la[k])]
        diff = [k for k in tensors if not torch.equal(la[k], lb[k])]
        diff += [k for k in la if k not in tensors and la[k] != lb[k]]
        worst = max([(la[k].double() - lb[k].double()).abs().max().item() for k in diff
                     if k in tensors and la[k].numel() and la[k].is_floating_point()], default=0.0)
        out[part] = dict(differ=len(diff), tensors=len(tensors), max_abs=worst, first=diff[:3])
    return out


__all__ = ['checkpoint_differences', 'leaves']
