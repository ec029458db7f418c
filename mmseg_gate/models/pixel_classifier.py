"""DatasetGAN's pixel classifier ensemble as an mmseg decode head (label-scarce segmentation).

The classifier is DatasetGAN's per-pixel MLP as DDPM-segmentation and the GATE authors use it
(yandex-research/ddpm-segmentation ``src/pixel_classifier.py``, Darkbblue/generic-diffusion-feature
``scarce_segmentation/segmentation/pixel_classifier.py``): Linear -> ReLU -> BatchNorm1d twice, then Linear to the
classes; 128/32 wide for fewer than 30 classes, 256/128 otherwise; weights N(0, 0.02), biases 0. Every pixel's
feature is the concatenation of all levels bilinearly upsampled to the label resolution.

Ensemble: ``predict_labels`` of those files takes each member's argmax and the per-pixel *mode* over members
(``torch.mode``: ties go to the smallest class); the mean softmax only feeds their uncertainty score. That is
``ensemble='vote'`` here (default); ``'mean_softmax'`` averages the members' probabilities instead.

Training differs in form, not in kind: the authors train the members one after another on shuffled pixels
(batch 64, Adam 1e-3, early stop on the loss); here the Runner trains all members together, each on its own
random draw of labelled pixels from the batch's images (independent members: one summed loss, disjoint
parameters, Adam's per-parameter state). Pixels are sampled *before* upsampling (bilinear interpolation at the
sampled positions, the same numbers as ``F.interpolate(..., align_corners=False)`` then indexing), so no
full-resolution feature map is ever held in training, and prediction runs in chunks of pixels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS


def sample_bilinear(feat: torch.Tensor, b: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
                    out_hw: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(feat, out_hw, mode='bilinear', align_corners=False)[b, :, y, x]`` as ``[n, C]``,
    computed at the n positions only."""
    h, w = feat.shape[-2:]
    H, W = out_hw

    def axis(pos, size, out):
        src = ((pos.to(torch.float64) + 0.5) * (size / out) - 0.5).clamp(min=0)
        lo = src.floor().long().clamp(max=size - 1)
        hi = (lo + 1).clamp(max=size - 1)
        return lo, hi, (src - lo).to(feat.dtype)[:, None]

    y0, y1, wy = axis(y, h, H)
    x0, x1, wx = axis(x, w, W)
    top = feat[b, :, y0, x0] * (1 - wx) + feat[b, :, y0, x1] * wx
    bottom = feat[b, :, y1, x0] * (1 - wx) + feat[b, :, y1, x1] * wx
    return top * (1 - wy) + bottom * wy


class PixelMLP(nn.Sequential):
    """DatasetGAN's pixel classifier: (Linear -> ReLU -> BatchNorm1d) x 2 -> Linear."""

    def __init__(self, in_channels: int, num_classes: int, hidden: Sequence[int]) -> None:
        layers, width = [], in_channels
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.BatchNorm1d(h)]
            width = h
        super().__init__(*layers, nn.Linear(width, num_classes))


@MODELS.register_module()
class PixelClassifierHead(BaseDecodeHead):
    """An ensemble of DatasetGAN pixel MLPs on all levels' features, upsampled to the label resolution.

    Args:
        in_channels: channels of each level (the backbone's ``out_channels``); all levels are used.
        num_classes: classes (the dataset's, background included).
        num_models: ensemble members (10 in the papers).
        hidden: hidden widths; ``None``: (128, 32) below 30 classes, else (256, 128) (DatasetGAN's rule).
        ensemble: ``'vote'`` (the authors': per-pixel majority of the members' argmax, ties to the smaller
            class) or ``'mean_softmax'``. Prediction returns the vote shares (or mean probabilities) per class.
        pixels_per_image: labelled pixels drawn per image and member in each training step (without
            replacement within the batch); ``None``: all labelled pixels.
        init_std: std of the normal initialisation of the Linear weights (the authors' 0.02).
        chunk_pixels: pixels per chunk at prediction (bounds the memory of the upsampled features).
        **kwargs: :class:`BaseDecodeHead`'s (``loss_decode``, ``ignore_index``, ``align_corners``, ...);
            ``channels`` defaults to the last hidden width and ``in_index`` to all levels.

    Training labels set the resolution the features are upsampled to (the authors' 256: load labels with
    ``LoadNpyAnnotations(label_size=...)`` after resizing the image); prediction uses ``ori_shape``.
    """

    def __init__(self, in_channels: Sequence[int] | int, num_classes: int, num_models: int = 10,
                 hidden: Sequence[int] | None = None, ensemble: str = 'vote', pixels_per_image: int | None = 1024,
                 init_std: float = 0.02, chunk_pixels: int = 16384, **kwargs) -> None:
        if ensemble not in ('vote', 'mean_softmax'):
            raise ValueError(f"ensemble={ensemble!r}: use 'vote' (the authors') or 'mean_softmax'")
        in_channels = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        hidden = tuple(hidden) if hidden is not None else ((128, 32) if num_classes < 30 else (256, 128))
        kwargs.setdefault('channels', hidden[-1])
        kwargs.setdefault('in_index', list(range(len(in_channels))))
        kwargs.setdefault('input_transform', 'multiple_select')
        kwargs.setdefault('init_cfg', None)
        super().__init__(in_channels=in_channels, num_classes=num_classes, **kwargs)
        del self.conv_seg  # each member has its own classifier layer
        self.dropout = None
        self.num_models, self.hidden, self.ensemble = int(num_models), hidden, ensemble
        self.pixels_per_image, self.init_std, self.chunk_pixels = pixels_per_image, init_std, int(chunk_pixels)
        self.members = nn.ModuleList(PixelMLP(sum(in_channels), num_classes, hidden) for _ in range(self.num_models))

    def init_weights(self) -> None:
        super().init_weights()
        for m in self.members.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, self.init_std)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------- features per pixel
    @staticmethod
    def pixel_features(feats: Sequence[torch.Tensor], b, y, x, out_hw) -> torch.Tensor:
        """Each (selected) level bilinearly upsampled to ``out_hw`` and read at (b, y, x): ``[n, sum(C)]``."""
        return torch.cat([sample_bilinear(f, b, y, x, out_hw) for f in feats], 1)

    def forward(self, inputs: Sequence[torch.Tensor], out_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Ensemble output ``[B, K, H, W]`` at ``out_hw`` (default: the first level's size): vote shares or
        mean probabilities, as ``ensemble`` says."""
        feats = self._transform_inputs(inputs)
        B = feats[0].shape[0]
        H, W = out_hw or feats[0].shape[-2:]
        out = feats[0].new_zeros(B, self.num_classes, H * W)
        grid_y, grid_x = torch.meshgrid(torch.arange(H, device=out.device), torch.arange(W, device=out.device),
                                        indexing='ij')
        grid_y, grid_x = grid_y.flatten(), grid_x.flatten()
        for i in range(B):
            for s in range(0, H * W, self.chunk_pixels):
                y, x = grid_y[s:s + self.chunk_pixels], grid_x[s:s + self.chunk_pixels]
                px = self.pixel_features(feats, torch.full_like(y, i), y, x, (H, W))
                out[i, :, s:s + len(y)] = self.combine([m(px) for m in self.members]).t()
        return out.view(B, self.num_classes, H, W)

    def combine(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Members' ``[n, K]`` logits -> ``[n, K]``: vote shares (argmax of each, counted) or mean softmax."""
        if self.ensemble == 'mean_softmax':
            return torch.stack([lg.softmax(1) for lg in logits]).mean(0)
        votes = torch.zeros_like(logits[0])
        for lg in logits:
            votes.scatter_add_(1, lg.argmax(1, keepdim=True), torch.ones_like(lg[:, :1]))
        return votes / len(logits)

    # ----------------------------------------------------------------- mmseg interface
    def loss(self, inputs, batch_data_samples, train_cfg) -> dict:
        labels = torch.stack([s.gt_sem_seg.data.squeeze(0) for s in batch_data_samples]).long()  # [B, H, W]
        valid = (labels != self.ignore_index).nonzero()  # [V, 3]: b, y, x
        if len(valid) == 0:
            raise ValueError('no labelled pixel in the batch: check ignore_index and the label maps')
        feats = self._transform_inputs(inputs)
        n = len(valid) if self.pixels_per_image is None else min(len(valid), self.pixels_per_image * len(labels))
        losses, accs = [], []
        for member in self.members:
            pick = valid[torch.randperm(len(valid), device=valid.device)[:n]] if n < len(valid) else valid
            b, y, x = pick.unbind(1)
            logits = member(self.pixel_features(feats, b, y, x, labels.shape[-2:]))
            target = labels[b, y, x]
            losses.append(sum(loss(logits, target, ignore_index=self.ignore_index) for loss in self._losses()))
            accs.append((logits.argmax(1) == target).float().mean() * 100)
        return {'loss_ce': torch.stack(losses).sum(), 'acc_seg': torch.stack(accs).mean().detach()}

    def _losses(self):
        return self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]

    def predict(self, inputs, batch_img_metas: list[dict], test_cfg) -> torch.Tensor:
        return self.forward(inputs, tuple(batch_img_metas[0]['ori_shape'][:2]))
