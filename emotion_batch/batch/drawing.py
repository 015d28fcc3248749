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
    """The timeline and track table rows of the files analysed in this run, in memory.

    Building them costs milliseconds, so `commit` does it inline, one pandas pass per burst of small files
    (`add`): they are ready when the last result arrives and never wait behind a chart. The tables of a burst
    are kept whole; `rows_of` picks the files the run's tables need. Files kept from earlier runs take their rows
    from the tables the last run wrote (`IncrementalRun._tables`), or, when those cannot be trusted, from their
    shards, through `add` too.
    """

    def __init__(self, bin_s: float) -> None:
        self.bin_s = float(bin_s)
        self._timelines: list[pd.DataFrame] = []
        self._tracks: list[pd.DataFrame] = []
        self._sources: set[str] = set()

    def __contains__(self, source: object) -> bool:
        return source in self._sources

    def add(self, rows: pd.DataFrame, durations: dict[str, float | None]) -> None:
        """Build and keep the table rows of the files `durations` names (source -> summary `duration_s`) from
        `rows`, all of their rows (one file's, or a burst's)."""
        from ..output import timeline as tables

        known = {s: d for s, d in durations.items() if d is not None}
        self._timelines.append(tables.timeline_table(rows, self.bin_s, known))
        self._tracks.append(tables.track_table(rows))
        self._sources.update(durations)

    def rows_of(self, sources: set[str]) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
        """(timeline parts, track parts) holding the rows of `sources` among the files added: all parts joined,
        then filtered once (filtering each burst's part against 100,000 names would cost minutes)."""
        import pandas as pd

        wanted = list(sources)

        def pick(parts: list[pd.DataFrame]) -> list[pd.DataFrame]:
            if not parts:
                return []
            whole = pd.concat(parts, ignore_index=True)
            return [whole[whole["source"].astype(object).isin(wanted)]]

        return pick(self._timelines), pick(self._tracks)
