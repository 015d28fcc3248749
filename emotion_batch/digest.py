"""Content fingerprints, so every output names exactly which model and detector produced it.

Kept as the import path `emotion_train` uses; the implementation is `files.file_digest`.
"""

from __future__ import annotations

import os

from .files import file_digest


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content."""
    return file_digest(path)
