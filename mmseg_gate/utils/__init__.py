from .files import IMAGE_SUFFIXES, list_images
from .memory import release_free_heap_memory
from .timing import StageTimer

__all__ = ['StageTimer', 'IMAGE_SUFFIXES', 'list_images', 'release_free_heap_memory']
