"""Tiny, randomly initialised assets in the real on-disk layouts, for tests and the demo."""
from .tiny_models import make_tiny_sd

__all__ = ['make_tiny_sd']
