"""Writing a run's JSON files so that a crash never leaves a half-written one behind.

TensorFlow-free, so the ONNX-only steps (ensemble, quantize) share it with training.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON to a temporary file beside `path`, flush it to disk, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=_json_default)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; these files are meant to be read and shipped
    os.replace(tmp, path)


def install_file(source: Path, dest: Path) -> None:
    """Copy beside ``dest``, then rename over it: a reader never sees a half-written model."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a model to ship must be readable by everyone
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
