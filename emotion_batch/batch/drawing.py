"""Outputs off the critical path: one background thread in the parent draws the charts while the workers analyse,
and each file's part of the timeline and track tables is built as it commits.

The parent mostly waits for results, so a chart drawn there as a file's result arrives costs the run little
wall time, especially near the end, when the last files keep fewer workers than cores busy. matplotlib is
imported in that thread as soon as the drawer starts, while the workers load their models. One thread only:
matplotlib's object API is safe when a single thread draws. `wait()` returns once everything submitted is done;
a failed job is logged, never raised (a chart problem never fails a run).

`TableParts` keeps each file's part of `<out stem>_timeline.csv` and `<out stem>_tracks.csv`, built from its rows
as its result arrives, in memory and beside its thumbnails in the state folder, so the end of a run
concatenates small tables instead of re-reading every shard (a rerun reads the parts of kept files back).
Building a part is cheap, so it happens as each file commits, not in the thread.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("emotion_batch")


def _warm_up() -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.figure  # noqa: F401


class Drawer:
    """Runs chart jobs in one background thread, in submission order."""

    def __init__(self, enabled: bool = True) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="emotion-batch-charts") if enabled else None
        self._pending: list[Future[Any]] = []
        if self._pool is not None:
            self._pending.append(self._pool.submit(_warm_up))

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        """Run `job(*args)` in the background (or at once when the drawer is disabled)."""
        if self._pool is None:
            self._run(job, *args)
        else:
            self._pending.append(self._pool.submit(self._run, job, *args))

    @staticmethod
    def _run(job: Callable[..., Any], *args: Any) -> None:
        try:
            job(*args)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not draw %s: %s", getattr(job, "__name__", job), exc)

    def wait(self) -> None:
        """Block until every job submitted so far has finished."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.exception()

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class TableParts:
    """One file's timeline and track tables, keyed by its folder in the state store (`OutputPaths.pictures/<shard
    stem>`, removed with its shard): in memory for files analysed now, as CSV files in that folder otherwise.

    Building a file's parts costs milliseconds, so `commit` does it inline: they are ready when the last result
    arrives and never wait behind a chart. The kept files are a cache, written without fsync (no disk flush on
    the run's path): each is named by the sha256 of its content and checked when read, so a torn write after a
    crash is rebuilt from the shard, never used.
    """

    def __init__(self, bin_s: float) -> None:
        self.bin_s = float(bin_s)
        self._parts: dict[Path, tuple[pd.DataFrame, pd.DataFrame]] = {}

    def _kinds(self) -> tuple[str, str]:
        return f"timeline-v1-{self.bin_s:g}s-", "tracks-v1-"

    def build(
        self, folder: Path, rows: pd.DataFrame, duration: float | None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Build and keep one file's parts (`rows`: all of its rows; `duration`: its summary's `duration_s`)."""
        from ..output import timeline as tables

        sources = rows["source"].dropna().unique()
        durations = {str(s): duration for s in sources} if duration is not None else None
        return self.keep(
            folder, (tables.timeline_table(rows, self.bin_s, durations), tables.track_table(rows))
        )

    def build_many(
        self, rows: pd.DataFrame, durations: dict[str, float | None]
    ) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
        """The parts of several files at once (`rows`: all their rows), by source: one pandas pass for a burst
        of small files instead of one per file. Keep each with `keep`."""
        from ..output import timeline as tables

        known = {s: d for s, d in durations.items() if d is not None}
        timeline, tracks = tables.timeline_table(rows, self.bin_s, known), tables.track_table(rows)
        by_source = [dict(tuple(t.groupby("source", sort=False))) for t in (timeline, tracks)]
        empty = (timeline.iloc[0:0], tracks.iloc[0:0])
        return {
            source: tuple(  # type: ignore[misc]
                split.get(source, blank).reset_index(drop=True) for split, blank in zip(by_source, empty)
            )
            for source in durations
        }

    def keep(
        self, folder: Path, parts: tuple[pd.DataFrame, pd.DataFrame]
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Hold one file's parts in memory and in its folder (a cache: a failure to write is only logged)."""
        self._parts[folder] = parts
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for part, kind in zip(parts, self._kinds()):
                _store(folder, kind, part)
        except OSError as exc:  # only a cache: the parts are built again from the shard next time
            log.debug("could not keep the table parts in %s: %s", folder, exc)
        return parts

    def get(
        self, folder: Path, rows: Callable[[], pd.DataFrame], duration: float | None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """One file's parts: from memory, else from its folder, else built from `rows()` (its shard)."""
        found = self._parts.get(folder)
        if found is not None:
            return found
        from ..output import timeline as tables

        timeline, tracks = (_load(folder, kind, columns) for kind, columns in zip(
            self._kinds(), (tables.TIMELINE_COLUMNS, tables.TRACK_COLUMNS)
        ))  # fmt: skip
        if timeline is not None and tracks is not None:
            self._parts[folder] = (timeline, tracks)
            return timeline, tracks
        return self.build(folder, rows(), duration)


def _store(folder: Path, kind: str, part: pd.DataFrame) -> None:
    from ..output.sinks import csv_text

    data = csv_text(part).encode("utf-8")
    target = folder / f"{kind}{hashlib.sha256(data).hexdigest()[:16]}.csv"
    for old in folder.glob(f"{kind}*.csv"):
        if old != target:
            old.unlink(missing_ok=True)
    if not target.is_file():
        partial = folder / f".{target.name}.partial"
        partial.write_bytes(data)
        os.replace(partial, target)


def _load(folder: Path, kind: str, columns: tuple[str, ...]) -> pd.DataFrame | None:
    from ..output import timeline as tables

    for path in sorted(folder.glob(f"{kind}*.csv")):
        try:
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest()[:16] != path.stem[len(kind) :]:
                raise ValueError("content does not match its name")
            return tables.read_table(io.BytesIO(data), columns)
        except (OSError, ValueError) as exc:
            log.debug("table part %s unusable (%s): built again", path, exc)
    return None
