"""The GATE guideline's verdict: is a technique's effect larger than the reference's own seed noise?

Img2Img outputs at a high strength differ from seed to seed by as much as many techniques change
them, so an effect only counts when it exceeds what two seeds of the *reference* give (measured on the
same images) and twice its standard error over the images. The pixel metric (PSNR to the input) and
the paper's feature-level score are judged alike, and a disagreement between them is reported.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

#: verdicts by the sign of a measurable effect
VERDICTS = {1: 'suppresses content shift', 0: 'no measurable difference', -1: 'increases content shift'}


@dataclass
class Effect:
    """An effect over images: technique minus reference, and the reference's seed-to-seed spread."""
    mean: float
    std: float
    noise: float  # mean |reference(seed) - reference(seed + 1)|
    count: int

    @property
    def threshold(self) -> float:
        stderr = self.std / np.sqrt(self.count) if self.count > 1 else 0.0
        return max(self.noise, 2 * stderr)

    @property
    def sign(self) -> int:
        """+1 / -1 when the effect is measurable, else 0."""
        if abs(self.mean) <= self.threshold:
            return 0
        return 1 if self.mean > 0 else -1

    def describe(self, unit: str = '') -> str:
        return (f'{self.mean:+.3g}{unit} ± {self.std:.2g} over {self.count} images; two reference seeds differ by '
                f'{self.noise:.3g}{unit}')


def effect(differences: Sequence[float], seed_differences: Sequence[float]) -> Effect:
    """``differences``: per image technique - reference (higher = closer to the input);
    ``seed_differences``: per image reference(seed + 1) - reference(seed)."""
    d = np.asarray(differences, dtype=float)
    return Effect(float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                  float(np.abs(np.asarray(seed_differences, dtype=float)).mean()), len(d))


def verdict(pixels: Effect, features: Effect) -> dict:
    """The verdict (from the Img2Img closeness, the paper's guideline) and whether the feature-level
    score agrees."""
    text = f'{VERDICTS[pixels.sign]} (PSNR to the input {pixels.describe(" dB")})'
    if features.sign != pixels.sign:
        text += (f'; the feature-level score disagrees: {VERDICTS[features.sign]} '
                 f'({features.describe()})')
    else:
        text += f'; the feature-level score agrees ({features.describe()})'
    return dict(verdict=VERDICTS[pixels.sign], agree=features.sign == pixels.sign, text=text,
                pixels=asdict(pixels), features=asdict(features))


__all__ = ['VERDICTS', 'Effect', 'effect', 'verdict']
