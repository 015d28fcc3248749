"""Outputs off the critical path: one background thread in the parent draws the charts while the workers analyse,
and each file's part of the timeline and track tables is built as it commits.

The parent mostly waits for results, so a chart drawn there as a file's result arrives costs the run little
wall time, especially near the end, when the last files keep fewer workers than cores busy. matplotlib is
imported in that thread as soon as the drawer starts, while the workers load their models. One thread only:
matplotlib's object API is safe when a single thread draws. `wait()` returns once everything submitted is done;
a failed job is logged, never raised (a chart problem never fails a run).

`TableParts` keeps each file's part of `<out stem>_timeline.csv` and `<out stem>_tracks.csv`, built from its rows
as its result arrives, so the end of a run concatenates small tables instead of re-reading every shard.
Building a part is cheap, so it happens as each file commits, not in the thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
    """The timeline and track table parts of the files analysed in this run, by source, in memory.

    Building a file's parts costs milliseconds, so `commit` does it inline (`build`, or `build_many` for a burst
    of small files): they are ready when the last result arrives and never wait behind a chart. Files kept from
    earlier runs take their parts from the tables the last run wrote (`IncrementalRun._tables`), or, when those
    cannot be trusted, from their shards.
    """

    def __init__(self, bin_s: float) -> None:
        self.bin_s = float(bin_s)
        self._parts: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}

    def __contains__(self, source: object) -> bool:
        return source in self._parts

    def build(
        self, source: str, rows: pd.DataFrame, duration: float | None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Build and keep one file's parts (`rows`: all of its rows; `duration`: its summary's `duration_s`)."""
        from ..output import timeline as tables

        durations = {source: duration} if duration is not None else None
        return self.keep(
            source, (tables.timeline_table(rows, self.bin_s, durations), tables.track_table(rows))
        )

    def build_many(
        self, rows: pd.DataFrame, durations: dict[str, float | None]
    ) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
        """The parts of several files at once (`rows`: all their rows), by source: one pandas pass for a burst
        of small files instead of one per file. Keep each with `keep`."""
        from ..output import timeline as tables

        known = {s: d for s, d in durations.items() if d is not None}
        timeline, tracks = tables.timeline_table(rows, self.bin_s, known), tables.track_table(rows)
        by_source = [_split_by_source(t) for t in (timeline, tracks)]
        empty = (timeline.iloc[0:0], tracks.iloc[0:0])
        return {
            source: tuple(  # type: ignore[misc]
                split.get(source, blank) for split, blank in zip(by_source, empty)
            )
            for source in durations
        }

    def keep(
        self, source: str, parts: tuple[pd.DataFrame, pd.DataFrame]
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        self._parts[source] = parts
        return parts

    def get(
        self, source: str, rows: Callable[[], pd.DataFrame], duration: float | None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """One file's parts: from memory, else built from `rows()` (its shard)."""
        found = self._parts.get(source)
        return found if found is not None else self.build(source, rows(), duration)


def _split_by_source(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{source: its rows} of a table whose rows are grouped by source (as the table builders leave them)."""
    sources = table["source"].astype(object).to_numpy()
    if not len(sources):
        return {}
    starts = [0, *(i for i in range(1, len(sources)) if sources[i] != sources[i - 1]), len(sources)]
    return {str(sources[a]): table.iloc[a:b].reset_index(drop=True) for a, b in zip(starts[:-1], starts[1:])}
