"""Per-file result shards: each analysed file's rows, in their own CSV file, written atomically.

A shard becomes visible (renamed into place) only once complete, and only then is it recorded in the state
store, so after a kill at any instant a file is either fully done (shard + record) or not done at all (at most
an orphan shard, removed by the next run). `--out` is never appended to: it is re-assembled from the shards in
source order, so its rows are ordered by source, frame and face and identical to an uninterrupted run's.
Shard names include the file's content hash and the settings fingerprint, so a new shard never overwrites one
that a record still points to.

Shards are written without fsync (`write_many`): a kill cannot hurt them (the page cache outlives the process),
and after a power loss a shard that did not reach the disk has another size than its record says, so the
planner analyses that file again ("rows missing from the state folder"). This keeps a burst of small files from
costing two fsyncs each.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..output.sinks import PARQUET_SUFFIXES, TEMP_SUFFIX, atomic_output, csv_text, open_sink, write_csv_parts
from ..schema import ROW_COLUMNS, rows_frame

SHARD_SUFFIX = ".csv"


def shard_name(source: str, sha256: str, fingerprint: str) -> str:
    """A flat, unique and safe file name for one file's rows under one set of settings."""
    key = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    return f"{key}-{sha256[:16]}-{fingerprint[:12]}{SHARD_SUFFIX}"


class ShardStore:
    """The folder of shards (`<out>.state/shards/`)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.folder / name

    def write(self, name: str, rows: pd.DataFrame) -> int:
        """Write one file's rows (aligned to the contract's columns) atomically; return the shard's size."""
        text = csv_text(rows.reindex(columns=list(ROW_COLUMNS))).encode("utf-8")
        with atomic_output(self.path(name)) as fh:
            fh.write(text)
        return len(text)

    def write_text(self, name: str, text: bytes) -> int:
        """Write one shard's bytes: a temporary file renamed into place (no fsync: see the module docstring)."""
        target = self.path(name)
        partial = target.with_name(f".{name}.{os.getpid()}{TEMP_SUFFIX}")
        with open(partial, "wb") as fh:
            fh.write(text)
        os.replace(partial, target)
        return len(text)

    def intact(self, name: str, size: int | None) -> bool:
        """Whether the shard exists with the size recorded for it."""
        try:
            return self.path(name).stat().st_size == size
        except OSError:
            return False

    def read(self, name: str) -> pd.DataFrame:
        """A shard back as a DataFrame with the contract's dtypes (floats round-trip exactly: tested)."""
        return read_output(self.path(name))

    def prune(self, keep: Iterable[str]) -> int:
        """Remove shards no record points to, and temporary files of killed runs; return how many."""
        wanted = set(keep)
        removed = 0
        for entry in self.folder.iterdir():
            if entry.name not in wanted and (
                entry.suffix == SHARD_SUFFIX or entry.name.endswith(TEMP_SUFFIX)
            ):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


def shard_texts(files: Sequence[Sequence[Sequence[Any]]], frame: pd.DataFrame | None = None) -> list[bytes]:
    """The shard bytes of several files' rows (`Row`s or tuples in ROW_COLUMNS order), from one DataFrame
    (`frame`: `rows_frame` of all their rows, when the caller has it already).

    Byte-identical to `csv_text` of each file's own frame (every value is formatted on its own), at a fraction of
    the cost for many small files. A source name with a line break makes CSV lines and rows differ; then each
    file is formatted on its own.
    """
    header = ",".join(ROW_COLUMNS) + "\n"
    flat = [row for rows in files for row in rows]
    if not flat:
        return [header.encode("utf-8") for _ in files]
    lines = csv_text(rows_frame(flat) if frame is None else frame, header=False).split("\n")
    if len(lines) != len(flat) + 1:
        return [csv_text(rows_frame(rows)).encode("utf-8") for rows in files]
    out, start = [], 0
    for rows in files:
        end = start + len(rows)
        out.append((header + "".join(line + "\n" for line in lines[start:end])).encode("utf-8"))
        start = end
    return out


def assemble(out: Path, shards: ShardStore, names: Sequence[str]) -> int:
    """Write `out` (CSV, or Parquet by extension) from the shards in the given order; return the rows written."""
    header = ",".join(ROW_COLUMNS) + "\n"
    if out.suffix.lower() not in PARQUET_SUFFIXES:
        return write_csv_parts(out, header, (shards.path(n) for n in names))
    with open_sink(out, rows_frame([])) as sink:
        for frame in _frames(shards, names):
            sink.write(frame)
    return sink.rows_written


def _frames(shards: ShardStore, names: Sequence[str]) -> Iterator[pd.DataFrame]:
    for name in names:
        yield shards.read(name)


def read_output(path: Path) -> pd.DataFrame:
    """Rows written by this package (a shard, or `--out` as CSV or Parquet) back with the contract's dtypes."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(
            path, dtype={"source": "string", "emotion": "string"}, keep_default_na=False, na_values=[""]
        )
    return rows_frame(frame.itertuples(index=False, name=None)) if len(frame) else rows_frame([])
