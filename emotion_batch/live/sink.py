"""Appends live rows to CSV as they are made, flushed at once, optionally starting a new file each hour or day.

The file has batch mode's columns (`schema.ROW_COLUMNS`), a header when it is new, and only whole lines: each
sample's rows are written in one call and flushed, so a reader (or a stop at any moment) never sees half a row
from this process. Rotation names the files after the period: `live.csv` becomes `live_2024-05-01T13.csv`
(hourly) or `live_2024-05-01.csv` (daily), by local time.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..schema import ROW_COLUMNS, Row

ROTATIONS = {"hourly": "%Y-%m-%dT%H", "daily": "%Y-%m-%d"}


class SinkError(Exception):
    """The output cannot be written (bad folder, disk full, permissions)."""


def _cell(value: object) -> object:
    return "" if value is None else value


class CsvSink:
    """`write(rows)` appends and flushes; `close()` at the end. `paths` lists every file written to."""

    def __init__(self, out: Path, rotate: str | None = None, clock: Callable[[], float] = time.time) -> None:
        if rotate is not None and rotate not in ROTATIONS:
            raise ValueError(f"rotate must be one of {', '.join(ROTATIONS)}")
        self.out, self.rotate, self.clock = out, rotate, clock
        self.paths: list[Path] = []  # one per period: 24 a day at most with hourly rotation
        self._file: io.TextIOWrapper | None = None
        self._path: Path | None = None
        self.rows = 0

    def path_for(self, when: float) -> Path:
        if self.rotate is None:
            return self.out
        stamp = time.strftime(ROTATIONS[self.rotate], time.localtime(when))
        return self.out.with_name(f"{self.out.stem}_{stamp}{self.out.suffix}")

    def _switch(self, path: Path) -> None:
        self.close()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists() or path.stat().st_size == 0
            self._file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - kept open across writes
            if new:
                self._file.write(",".join(ROW_COLUMNS) + "\n")
                self._file.flush()
        except OSError as exc:
            raise SinkError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._path = path
        if path not in self.paths:
            self.paths.append(path)
            del self.paths[
                :-48
            ]  # bounded over a long capture; older files are listed in the log as they close

    def write(self, rows: Sequence[Row]) -> None:
        path = self.path_for(self.clock())
        if path != self._path or self._file is None:
            self._switch(path)
        file = self._file
        if file is None:  # pragma: no cover - _switch opens it or raises
            raise SinkError(f"{path} is not open")
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([[_cell(v) for v in row] for row in rows])
        try:
            file.write(buffer.getvalue())  # one write per sample: whole lines only
            file.flush()
        except OSError as exc:
            raise SinkError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.rows += len(rows)

    def open_now(self) -> None:
        """Create the (current) file with its header before the first row, so it exists from the start."""
        path = self.path_for(self.clock())
        if path != self._path:
            self._switch(path)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file, self._path = None, None
