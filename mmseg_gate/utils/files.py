"""Image files named on a command line: files as given, folders searched recursively."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, paths):
        files += sorted(p for p in item.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES) if item.is_dir() else [item]
    return files
