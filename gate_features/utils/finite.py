"""Refuse non-finite numbers before they spread: one NaN pixel becomes a NaN loss, non-finite weights after the
optimizer step, and through BatchNorm non-finite features for the clean images of the batch too."""
from __future__ import annotations

from typing import Sequence

import torch


class NonFiniteError(FloatingPointError):
    """Images or a loss with NaN or infinite values."""


def nonfinite_positions(batch: torch.Tensor | Sequence[torch.Tensor]) -> list[int]:
    """Batch positions whose tensor holds a NaN or an infinity (integer tensors are always finite)."""
    items = batch if isinstance(batch, (list, tuple)) else list(batch)
    return [i for i, x in enumerate(items)
            if torch.is_tensor(x) and x.is_floating_point() and not bool(torch.isfinite(x).all())]


def check_finite_images(batch: torch.Tensor | Sequence[torch.Tensor], files: Sequence[str | None] | None = None,
                        where: str = 'the backbone') -> None:
    """Raise :class:`NonFiniteError` naming the batch positions (and their files, where known) of images with
    NaN or infinite pixels."""
    bad = nonfinite_positions(batch)
    if not bad:
        return
    items = batch if isinstance(batch, (list, tuple)) else list(batch)
    described = []
    for i in bad:
        x = items[i]
        what = f'{int(torch.isnan(x).sum())} NaN, {int(torch.isinf(x).sum())} infinite of {x.numel()} values'
        name = files[i] if files is not None and i < len(files) and files[i] else None
        described.append(f'position {i}' + (f' ({name})' if name else '') + f': {what}')
    raise NonFiniteError(f'{where} got {len(bad)} image(s) with non-finite pixels in a batch of {len(items)}: '
                         + '; '.join(described) + '. Fix or drop those files (a float image format, e.g. .npy/.tif/'
                         '.exr, or a transform dividing by zero), or filter them out of the dataset.')
