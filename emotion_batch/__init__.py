"""emotion-batch: per-frame facial emotion timelines for folders of videos and photos.

`emotion_batch.analyze(paths, ...)` returns a pandas DataFrame; the `emotion-batch` command writes CSV/Parquet,
a per-file summary and charts. Heavy imports (OpenCV, onnxruntime) are deferred until first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ConfigError", "__version__", "analyze"]

if TYPE_CHECKING:
    from .api import ConfigError, analyze


def __getattr__(name: str) -> Any:
    if name in ("analyze", "ConfigError"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'emotion_batch' has no attribute {name!r}")
