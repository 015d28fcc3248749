"""The output contract: column names, order and dtypes shared by the CSV, Parquet and DataFrame outputs.

Other tooling relies on these names, so they live in one place and every writer builds its frames from here.
"""

from __future__ import annotations

import math
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
    #: The frame's shot within its video (0, then +1 at each hard cut, `vision.shots`); 0 for images.
    shot: int
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
    def no_face(cls, source: str, frame_index: int, timestamp_s: float, shot: int = 0) -> Row:
        return cls(source, frame_index, timestamp_s, shot, 0, *(None,) * (len(cls._fields) - 5))


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


def _columns(fields: Iterable[str], at: int, expected: Sequence[str], what: str) -> tuple[str, ...]:
    """The column names a typed record declares, checked to hold `expected` (the emotions) at `at`."""
    names = tuple(fields)
    if names[at : at + len(expected)] != tuple(expected):  # pragma: no cover - a guard for whoever edits them
        raise AssertionError(f"{what} must follow EMOTIONS, in order")
    return names


# Nullable integers so that a frame without faces keeps integer columns integral ("12", not "12.0").
_PANDAS_DTYPES = {"str": "string", "int": "Int64", "float": "float64"}


def _dtypes(record: type) -> dict[str, str]:
    """pandas dtypes from a record's annotations ("int | None" -> Int64, "str" -> string, "float" -> float64)."""
    hints = {k: getattr(v, "__forward_arg__", v) for k, v in record.__annotations__.items()}
    return {name: _PANDAS_DTYPES[str(hint).split("|")[0].strip()] for name, hint in hints.items()}


#: Required per-frame, per-face columns, in order. Extra columns, if any, come after these.
ROW_COLUMNS: tuple[str, ...] = _columns(Row._fields, 12, EMOTIONS, "Row's emotion fields")
_ROW_DTYPES = _dtypes(Row)
#: Per-file summary columns, in order.
SUMMARY_COLUMNS: tuple[str, ...] = _columns(
    FileSummary.__annotations__, 10, [f"mean_{e}" for e in EMOTIONS], "FileSummary's mean fields"
)
_SUMMARY_DTYPES = _dtypes(FileSummary)

#: Values of the summary's `error_kind`, so failures can be counted and filtered without parsing messages.
ERROR_KINDS: dict[str, str] = {
    "unreadable": "the file cannot be read (permissions, broken symlink, symlink loop, not a regular file), or a "
    "folder cannot be listed (its row names the folder, media_type folder)",
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


def dominant_emotion(means: Mapping[str, Any] | Sequence[float | None]) -> str | None:
    """The emotion with the highest mean probability; the first in `EMOTIONS` order on a tie; None when unknown.

    `means` is either a mapping keyed by emotion or by `mean_<emotion>` (a summary or table row), or a sequence
    of 7 values in `EMOTIONS` order. NaN values (no faces) never win; all NaN gives None.
    """
    if isinstance(means, Mapping):
        values = [means.get(e, means.get(f"mean_{e}")) for e in EMOTIONS]
    else:
        values = list(means)
    if len(values) != len(EMOTIONS):
        raise ValueError(f"expected {len(EMOTIONS)} values, got {len(values)}")
    best: str | None = None
    best_value = -math.inf
    for emotion, value in zip(EMOTIONS, values):
        try:
            v = float(value)
        except (TypeError, ValueError):  # None, pd.NA
            continue
        if not math.isnan(v) and v > best_value:
            best, best_value = emotion, v
    return best


def dominant_emotions(means: Any) -> list[str | None]:
    """`dominant_emotion` of each row of an [N, 7] array of mean probabilities (EMOTIONS order), in one pass.

    The same rule: the highest value wins, the first in `EMOTIONS` order on a tie, NaN never wins, an all-NaN
    row gives None.
    """
    import numpy as np

    values = np.asarray(means, dtype=float).reshape(-1, len(EMOTIONS))
    missing = np.isnan(values)
    best = np.where(missing, -np.inf, values).argmax(axis=1)
    return [None if gone else EMOTIONS[k] for k, gone in zip(best.tolist(), missing.all(axis=1).tolist())]
