"""Writing a run's JSON files so that a crash never leaves a half-written one behind.

TensorFlow-free, so the ONNX-only steps (ensemble, quantize) share it with training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from emotion_batch.files import atomic_file, atomic_path


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON to a temporary file beside `path`, flush it to disk, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as handle:
        json.dump(data, handle, indent=2, default=_json_default)
        handle.write("\n")  # a text file ends in a newline (the card shows up in diffs)


def install_file(source: Path, dest: Path) -> None:
    """Copy beside ``dest``, then rename over it: a reader never sees a half-written model."""
    with atomic_path(dest) as pending:
        shutil.copyfile(source, pending.path)


def card_path_of(start: Path) -> Path:
    """Where the card of a network a run can start from (``--init-from``) lies, whether or not it exists.

    An exported ``model.onnx`` has its ``model.json`` beside it; ``RUN/checkpoints/best.keras`` has it in RUN.
    """
    return start.with_name("model.json") if start.suffix == ".onnx" else start.parent.parent / "model.json"


#: The keys of a card's ``crop`` that frame faces (the runtime's `CropGeometry`); any other key, such as
#: ``inherited_from``, only says where the numbers came from.
FRAMING_KEYS = ("scale", "offset_x", "offset_y")


def framing_of(card: dict) -> dict | None:
    """How a card's model wants faces framed: its ``crop`` without provenance notes; None when it has none.

    Compare framings with this, not the raw ``crop``: two cards that frame faces the same way may still
    differ in where they say the numbers came from.
    """
    crop = card.get("crop")
    return {key: crop[key] for key in FRAMING_KEYS if key in crop} if crop else None


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
