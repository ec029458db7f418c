from .transforms import LoadCaption

__all__ = ['LoadCaption']
