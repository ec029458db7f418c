"""GATEDiffusionBackbone: mmseg's backbone over the extractor (:class:`gate_features.GATEFeatures`), amalgamated
per level."""
from __future__ import annotations

import copy

import torch
from mmengine.model import BaseModule
from mmseg.registry import MODELS

from gate_features.extractor import GATE_TAPS, GATEFeatures, known_keywords
from gate_features.scene_prompts import split_class_ids

from .amalgamation import Amalgamation


@MODELS.register_module()
class GATEDiffusionBackbone(GATEFeatures, BaseModule):
    """Diffusion features for segmentation, with GATE's content-shift suppression.

    The extractor, :class:`gate_features.GATEFeatures` (frozen stack, branches, taps; every argument but the two
    below is its own and documented there), with the mmseg side on top: ``init_cfg``, the amalgamation of the
    branches per level and, with ``pyramid``, VPDDepthHead's four levels. Checkpoints hold the amalgamation only:
    the frozen parts are no registered submodules.

    Input: images normalised by the data preprocessor; by default ``mean=std=127.5`` so they are
    in [-1, 1] as SD expects (RGB: keep ``bgr_to_rgb=True``). Give the preprocessor's ``mean`` and
    ``std`` here if it uses others (e.g. ImageNet statistics): the backbone undoes them.

    Output: one feature map per level, sorted high resolution first (1/8, 1/16, 1/32 for SD1.5's
    GATE taps) as every mmseg backbone; ``out_channels`` gives the head's ``in_channels``.

    Args:
        pretrained: local diffusers folder or hub id of a pipeline (:class:`gate_features.GATEFeatures`).
        amalgamation: kwargs of :class:`Amalgamation`, or ``None`` to return a single branch's raw
            features.
        init_cfg: mmengine's initialisation config of the trainable parts.
        **kwargs: the extractor's arguments (``branches``, ``prompt``, ``timestep``, ``taps``, ``dtype``, ...).
    """

    @known_keywords(passes_to=GATEFeatures.__init__)
    def __init__(self, pretrained: str, amalgamation: dict | None = dict(), init_cfg: dict | None = None,
                 **kwargs) -> None:
        GATEFeatures.__init__(self, pretrained, **kwargs)  # nn.Module's, then BaseModule's (no init_cfg yet) init
        self.init_cfg = copy.deepcopy(init_cfg)
        if amalgamation is None:
            if len(self.specs) > 1:
                raise ValueError(f'amalgamation=None needs exactly one branch, got {len(self.specs)}')
            self.amalgamation = None
            self.out_channels = self.level_channels
        else:
            self.amalgamation = Amalgamation(self.level_channels, len(self.specs), **amalgamation)
            self.out_channels = self.amalgamation.out_channels
        if self.pyramid is not None:  # VPDDepthHead's four levels: a missing 1/64 is pooled from 1/32
            self.out_channels, self.strides = self.pyramid.plan(self.out_channels, self.strides)

    def forward(self, img: torch.Tensor | tuple) -> list[torch.Tensor]:
        img, class_ids = split_class_ids(img)  # DepthEstimator's (img, class ids) when class_embed_select
        if class_ids is not None and not self.class_embed_select:
            raise ValueError('class ids were given but no branch prompt is a per-scene template: set '
                             "prompt_classes and a prompt with {}, e.g. 'a photo of a {}'")
        feats = self.extract(img, class_ids)
        out = [level[0] for level in feats] if self.amalgamation is None else self.amalgamation(feats)
        return out if self.pyramid is None else self.pyramid.extend(out, self.strides)


__all__ = ['GATE_TAPS', 'GATEDiffusionBackbone']
