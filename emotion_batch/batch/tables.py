"""The rows of `<out stem>_timeline.csv` and `<out stem>_tracks.csv` for the files a run analyses, built as their
results commit, so the end of a run concatenates a few frames instead of re-reading every shard."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


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
