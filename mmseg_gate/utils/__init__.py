from .timing import StageTimer

__all__ = ['StageTimer']
