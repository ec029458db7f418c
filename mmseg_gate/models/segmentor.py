"""EncoderDecoder that hands each image's caption to the backbone as its prompt."""
from __future__ import annotations

from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS


@MODELS.register_module()
class CaptionEncoderDecoder(EncoderDecoder):
    """A stock EncoderDecoder plus: ``data_samples[i].metainfo['caption']`` becomes image i's prompt.

    Pair it with the ``LoadCaption`` transform and a backbone built with ``keep_text_encoder=True``.
    """

    def _use_captions(self, data_samples) -> None:
        captions = [s.metainfo.get('caption') for s in data_samples] if data_samples else None
        self.backbone.set_prompts(captions)

    def loss(self, inputs, data_samples):
        self._use_captions(data_samples)
        try:
            return super().loss(inputs, data_samples)
        finally:
            self.backbone.set_prompts(None)

    def predict(self, inputs, data_samples=None):
        self._use_captions(data_samples)
        try:
            return super().predict(inputs, data_samples)
        finally:
            self.backbone.set_prompts(None)
