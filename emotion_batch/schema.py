"""The output contract: column names, order and dtypes shared by the CSV, Parquet and DataFrame outputs.

Other tooling relies on these names, so they live in one place and every writer builds its frames from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

if TYPE_CHECKING:
    import pandas as pd

#: The seven FER-2013 classes, in CSV column order.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


class Row(NamedTuple):
    """One face in one sampled frame (or a sampled frame without faces): a row of the CSV, in column order.

    The output contract itself: `ROW_COLUMNS` is read off these fields. A frame without faces has
    `n_faces == 0` and None in every face field (`Row.no_face`).
    """

    source: str
    frame_index: int
    timestamp_s: float
    n_faces: int
    face_index: int | None
    track_id: int | None
    x: int | None
    y: int | None
    w: int | None
    h: int | None
    det_score: float | None
    angry: float | None
    disgust: float | None
    fear: float | None
    happy: float | None
    neutral: float | None
    sad: float | None
    surprise: float | None
    emotion: str | None
    confidence: float | None

    @classmethod
    def no_face(cls, source: str, frame_index: int, timestamp_s: float) -> Row:
        return cls(source, frame_index, timestamp_s, 0, *(None,) * (len(cls._fields) - 4))


#: Required per-frame, per-face columns, in order. Extra columns, if any, come after these.
ROW_COLUMNS: tuple[str, ...] = Row._fields
if ROW_COLUMNS[11:18] != EMOTIONS:  # pragma: no cover - a guard for whoever edits Row
    raise AssertionError("Row's emotion fields must be EMOTIONS, in order")

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


class FileSummary(TypedDict, total=False):
    """One row of the per-file summary (`SUMMARY_COLUMNS`), as analysis produces it and the state store keeps it.

    Keys are optional: a skipped or failed file has no statistics.
    """

    source: str
    path: str
    media_type: str | None
    status: str  # ok | error | skipped
    error: str | None
    duration_s: float | None
    frames_sampled: int
    frames_with_faces: int
    faces: int
    tracks: int
    mean_angry: float
    mean_disgust: float
    mean_fear: float
    mean_happy: float
    mean_neutral: float
    mean_sad: float
    mean_surprise: float
    dominant_emotion: str | None
    detector: str
    detector_sha256: str
    model: str
    model_sha256: str
    elapsed_s: float
    error_kind: str | None


#: Per-file summary columns, in order.
SUMMARY_COLUMNS: tuple[str, ...] = tuple(FileSummary.__annotations__)
if SUMMARY_COLUMNS[10:17] != tuple(f"mean_{e}" for e in EMOTIONS):  # pragma: no cover
    raise AssertionError("FileSummary's mean fields must follow EMOTIONS, in order")

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
    records: Iterable[Sequence[object] | Mapping[str, object]], columns: Sequence[str], dtypes: dict[str, str]
) -> pd.DataFrame:
    import pandas as pd  # here, not at the top: analysis workers build plain tuples and never load pandas

    rows: Any = list(records)  # tuples or mappings: pandas takes either
    return pd.DataFrame.from_records(rows, columns=list(columns)).astype(dtypes)


def rows_frame(records: Iterable[Sequence[object]]) -> pd.DataFrame:
    """Build a per-frame DataFrame with the contract's columns and dtypes from `Row`s (or plain tuples)."""
    return _frame(records, ROW_COLUMNS, _ROW_DTYPES)


def summary_frame(records: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Build a summary DataFrame with the contract's columns and dtypes from per-file dicts."""
    return _frame(records, SUMMARY_COLUMNS, _SUMMARY_DTYPES)
