"""Tiny, randomly initialised assets in the real on-disk layouts, for tests and the demo."""
from .tiny_models import make_sd15_shaped, make_tiny_captioner, make_tiny_sd

__all__ = ['make_tiny_sd', 'make_tiny_captioner', 'make_sd15_shaped']
