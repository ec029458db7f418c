from .files import IMAGE_SUFFIXES, list_images
from .memory import free_heap_bytes, release_free_heap_memory
from .timing import StageTimer

__all__ = ['StageTimer', 'IMAGE_SUFFIXES', 'list_images', 'free_heap_bytes', 'release_free_heap_memory']
