"""Files: images named on a command line (files as given, folders searched recursively), file hashes."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, paths):
        files += sorted(p for p in item.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES) if item.is_dir() else [item]
    return files


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (huggingface_hub's chunked hashing)."""
    import os
    from huggingface_hub.utils.sha import sha_fileobj
    with open(os.path.expanduser(str(path)), 'rb') as f:
        return sha_fileobj(f).hex()
