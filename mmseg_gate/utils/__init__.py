from .files import IMAGE_SUFFIXES, list_images
from .timing import StageTimer

__all__ = ['StageTimer', 'IMAGE_SUFFIXES', 'list_images']
