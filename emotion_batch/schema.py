"""The output contract: column names, order and dtypes shared by the CSV, Parquet and DataFrame outputs.

Other tooling relies on these names, so they live in one place and every writer builds its frames from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: The seven FER-2013 classes, in CSV column order.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

#: Required per-frame, per-face columns, in order. Extra columns, if any, come after these.
ROW_COLUMNS: tuple[str, ...] = (
    "source",
    "frame_index",
    "timestamp_s",
    "n_faces",
    "face_index",
    "track_id",
    "x",
    "y",
    "w",
    "h",
    "det_score",
    *EMOTIONS,
    "emotion",
    "confidence",
)

# Nullable integers so that a frame without faces keeps integer columns integral ("12", not "12.0").
_ROW_DTYPES: dict[str, str] = {
    "source": "string",
    "frame_index": "Int64",
    "timestamp_s": "float64",
    "n_faces": "Int64",
    "face_index": "Int64",
    "track_id": "Int64",
    "x": "Int64",
    "y": "Int64",
    "w": "Int64",
    "h": "Int64",
    "det_score": "float64",
    **{e: "float64" for e in EMOTIONS},
    "emotion": "string",
    "confidence": "float64",
}

#: Per-file summary columns, in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "source",
    "path",
    "media_type",
    "status",
    "error",
    "duration_s",
    "frames_sampled",
    "frames_with_faces",
    "faces",
    "tracks",
    *(f"mean_{e}" for e in EMOTIONS),
    "dominant_emotion",
    "detector",
    "detector_sha256",
    "model",
    "model_sha256",
    "elapsed_s",
    "error_kind",
)

#: Values of the summary's `error_kind`, so failures can be counted and filtered without parsing messages.
ERROR_KINDS: dict[str, str] = {
    "unreadable": "the file cannot be read (permissions, broken symlink, symlink loop, not a regular file)",
    "empty": "the file is empty",
    "undecodable": "the content is not decodable as the image or video it claims to be",
    "truncated": "the file is incomplete (cut off, or still being written)",
    "no_frames": "a video container without a single decodable frame",
    "too_large": "an image above the pixel limit (decompression bomb protection)",
    "changed": "the file changed while it was being analysed",
    "timeout": "no result within --file-timeout; the worker was stopped",
    "crashed": "the worker process died (e.g. a decoder crash)",
    "internal": "an unexpected error in emotion-batch itself",
}

_SUMMARY_DTYPES: dict[str, str] = {
    "source": "string",
    "path": "string",
    "media_type": "string",
    "status": "string",
    "error": "string",
    "duration_s": "float64",
    "frames_sampled": "Int64",
    "frames_with_faces": "Int64",
    "faces": "Int64",
    "tracks": "Int64",
    **{f"mean_{e}": "float64" for e in EMOTIONS},
    "dominant_emotion": "string",
    "detector": "string",
    "detector_sha256": "string",
    "model": "string",
    "model_sha256": "string",
    "elapsed_s": "float64",
    "error_kind": "string",
}


def _frame(
    records: Iterable[Sequence | dict], columns: Sequence[str], dtypes: dict[str, str]
) -> pd.DataFrame:
    import pandas as pd  # here, not at the top: analysis workers build plain tuples and never load pandas

    return pd.DataFrame.from_records(list(records), columns=list(columns)).astype(dtypes)


def rows_frame(records: Iterable[Sequence]) -> pd.DataFrame:
    """Build a per-frame DataFrame with the contract's columns and dtypes from row tuples."""
    return _frame(records, ROW_COLUMNS, _ROW_DTYPES)


def summary_frame(records: Iterable[dict]) -> pd.DataFrame:
    """Build a summary DataFrame with the contract's columns and dtypes from per-file dicts."""
    return _frame(records, SUMMARY_COLUMNS, _SUMMARY_DTYPES)
