"""Tables a person reads: each person's emotion minute by minute (`<out stem>_timeline.csv`) and one line per
person (`<out stem>_tracks.csv`).

Both tables are built from per-face rows (the output contract, `schema.ROW_COLUMNS`) of one or more files and
are independent per source, so a run driver can build them file by file as results arrive and concatenate:
`timeline_table(result.rows)` / `track_table(result.rows)` for each file, `write_table(pd.concat(parts), path)`
at the end. Frames without faces (`n_faces == 0`) contribute no rows here.

A person is a `(source, shot, track_id)`: rows may carry a `shot` column (shot detection); when they do not,
the tables still have the `shot` column, empty. Images have timestamp 0 and track = face index, so each face of
an image is one track with one sample, in one bin.

"Dominant emotion" has one definition everywhere (the summary's `dominant_emotion` uses the same rule, see
`analysis.file_stats`): the emotion with the highest *mean* probability over the samples considered; ties go to
the first in `EMOTIONS` order. `schema.dominant_emotion()` is that rule (importable from here too); the
summary, charts, subtitles and report all call it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from hashlib import sha256
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from ..defaults import DEFAULT_BIN_S
from ..files import quick_replace
from ..schema import EMOTIONS, dominant_emotions
from ..schema import dominant_emotion as dominant_emotion  # the one rule, importable from here too

if TYPE_CHECKING:
    import pandas as pd

MEAN_COLUMNS: tuple[str, ...] = tuple(f"mean_{e}" for e in EMOTIONS)
#: Columns of `<out stem>_timeline.csv`, in order.
TIMELINE_COLUMNS: tuple[str, ...] = (
    "source", "shot", "track_id", "bin_start_s", "bin_end_s", "samples", *MEAN_COLUMNS, "dominant_emotion",
)  # fmt: skip
#: Columns of `<out stem>_tracks.csv`, in order.
TRACK_COLUMNS: tuple[str, ...] = (
    "source", "shot", "track_id", "first_seen_s", "last_seen_s", "samples", "sampling_interval_s",
    "seconds_in_view", *MEAN_COLUMNS, "dominant_emotion",
)  # fmt: skip
#: Output names stay below this many bytes (most file systems allow 255 per name).
MAX_NAME_BYTES = 200
_KEY = ["source", "shot", "track_id"]


def face_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows that are faces with a track, with a `shot` column (NA when the rows have none)."""
    import pandas as pd

    faces = rows[(rows["n_faces"].fillna(0) > 0) & rows["track_id"].notna()].copy()
    faces.attrs = {}  # the tables never carry the rows' attachments (`analyze()` puts whole tables there)
    if "shot" not in faces.columns:
        faces["shot"] = pd.array([pd.NA] * len(faces), dtype="Int64")
    return faces


def sampling_interval(rows: pd.DataFrame) -> dict[str, float]:
    """Per source, the median step between consecutive sampled frames (faces or not), in seconds; 0 for images.

    Taken from all sampled frames of the source, so it is the sampler's step (1 / fps, or N frames with --every)
    whether or not a face was seen.
    """
    frames = rows[["source", "timestamp_s"]].astype({"timestamp_s": float}).drop_duplicates()
    frames = frames.sort_values(["source", "timestamp_s"], kind="stable")
    steps = frames.groupby("source", sort=False)["timestamp_s"].diff()
    medians = steps.groupby(frames["source"], sort=False).median()  # NaN for a source with one time
    return {str(s): float(m) if m == m else 0.0 for s, m in medians.items()}


def _aggregate(faces: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per group of `keys` (sorted, missing keys kept): its samples, first and last time, mean
    probabilities (MEAN_COLUMNS) and dominant emotion. One pandas pass, however many groups."""
    grouped = faces.groupby(keys, sort=True, dropna=False)
    out = grouped[list(EMOTIONS)].mean()
    out.columns = list(MEAN_COLUMNS)
    times = grouped["timestamp_s"]
    out["first_seen_s"] = times.min().astype(float)
    out["last_seen_s"] = times.max().astype(float)
    out["samples"] = grouped.size()
    out["dominant_emotion"] = dominant_emotions(out[list(MEAN_COLUMNS)].to_numpy(dtype=float))
    return out.reset_index()


def _frame(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """`table`'s `columns`, in order, with the tables' dtypes."""
    frame = table.reindex(columns=list(columns))
    dtypes = {"source": "string", "track_id": "Int64", "samples": "Int64", "dominant_emotion": "string"}
    try:
        return frame.astype({**dtypes, "shot": "Int64"})
    except (TypeError, ValueError):
        return frame.astype(dtypes)  # shots named rather than numbered: kept as they are


def timeline_table(
    rows: pd.DataFrame, bin_s: float = DEFAULT_BIN_S, durations: Mapping[str, float | None] | None = None
) -> pd.DataFrame:
    """One row per source, shot, track and time bin [bin_start_s, bin_end_s) with samples in it (TIMELINE_COLUMNS).

    Bins are aligned on 0: bin k is [k * bin_s, (k + 1) * bin_s). `durations` (source -> seconds, e.g. the
    summary's `duration_s`) clips the last bin's end to the media's duration; an image (duration 0) gets one bin
    [0, 0]. The mean columns average the raw per-sample probabilities; `dominant_emotion` applies
    `dominant_emotion()` to them.
    """
    if not bin_s > 0:
        raise ValueError("bin_s must be positive")
    faces = face_rows(rows)
    faces["_bin"] = np.floor(faces["timestamp_s"].to_numpy(dtype=float) / bin_s).astype(np.int64)
    table = _aggregate(faces, [*_KEY, "_bin"])
    start = table["_bin"].to_numpy(dtype=float) * bin_s
    end = start + bin_s
    known = {str(s): float(d) for s, d in (durations or {}).items() if d is not None and not math.isnan(d)}
    if known:
        duration = table["source"].astype(object).map(lambda s: known.get(str(s), math.nan)).to_numpy(float)
        clipped = np.minimum(end, np.maximum(duration, start))
        end = np.where(np.isnan(duration), end, clipped)
    table["bin_start_s"], table["bin_end_s"] = start, end
    return _frame(table, TIMELINE_COLUMNS)


def track_table(rows: pd.DataFrame, interval_s: Mapping[str, float] | float | None = None) -> pd.DataFrame:
    """One row per source, shot and track (TRACK_COLUMNS): when it was seen, for how long, its emotion mix.

    `seconds_in_view` = samples x the source's sampling interval: each sample stands for one sampling step of
    time, so gaps in a track (looking away, occlusion) are not counted, unlike last - first. The interval is
    `interval_s` (one value, or per source), else the median step between the source's sampled frames
    (`sampling_interval`), which needs the rows of frames without faces too; pass all of a file's rows. An image
    (one sample, interval 0) has 0 seconds in view.
    """
    faces = face_rows(rows)
    if isinstance(interval_s, (int, float)):
        intervals: Mapping[str, float] = {str(s): float(interval_s) for s in faces["source"].unique()}
    else:
        intervals = interval_s if interval_s is not None else sampling_interval(rows)
    table = _aggregate(faces, _KEY)
    step = table["source"].astype(object).map(lambda s: float(intervals.get(str(s), 0.0))).to_numpy(float)
    table["sampling_interval_s"] = step
    table["seconds_in_view"] = table["samples"].to_numpy(dtype=float) * step
    return _frame(table, TRACK_COLUMNS)


def read_table(path: str | os.PathLike[str] | IO[bytes], columns: Sequence[str]) -> pd.DataFrame:
    """A timeline or track table written as CSV by this module (`csv_text`) back with its dtypes, floats exact."""
    import pandas as pd

    frame = pd.read_csv(
        path,
        dtype={"source": "string", "dominant_emotion": "string"},
        keep_default_na=False,
        na_values=[""],
    )
    return _frame(frame, columns)


def write_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a table as CSV (or Parquet for a .parquet path) atomically: a reader never sees half a file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with quick_replace(out) as partial:
        if out.suffix.lower() == ".parquet":
            table.to_parquet(partial, index=False)
        else:
            table.to_csv(partial, index=False)
    return out


def table_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """`<out stem>_timeline<ext>` and `<out stem>_tracks<ext>` beside the results file `out`."""
    out = Path(out)
    return out.with_name(f"{out.stem}_timeline{out.suffix}"), out.with_name(f"{out.stem}_tracks{out.suffix}")


def concat(tables: Iterable[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    """Concatenate per-file tables (an empty table with the right columns when there are none)."""
    import pandas as pd

    parts = [t for t in tables if len(t)]
    return pd.concat(parts, ignore_index=True) if parts else _frame(pd.DataFrame(), columns)


def safe_filename(source: str, suffix: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """A flat, portable file name for a source path plus `suffix`, below `max_bytes` bytes of UTF-8.

    Folders are joined with '__' and odd characters replaced, so names stay readable; charts, thumbnails and
    subtitles are all named by it. When flattening lost information (replaced characters, or '__' already in
    the path) or the name had to be shortened, 8 hex digits of the source's sha256 are added, so two sources
    never share a name.
    """
    flat = source.replace("/", "__")
    clean = re.sub(r"[^\w.\-]+", "_", flat)
    lossy = clean != flat or "__" in source
    tag = "-" + sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    budget = max_bytes - len(suffix.encode())
    if not lossy and len(clean.encode()) <= budget:
        return clean + suffix
    stem = clean.encode()[: budget - len(tag)].decode("utf-8", "ignore")
    return stem + tag + suffix
