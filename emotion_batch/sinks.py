"""Writing tables: CSV, or Parquet when the path ends in .parquet, always through a temporary file.

A sink writes to a temporary file in the destination folder and renames it over the destination only when the
`with` block finishes without error, so an existing results file is never left half-written and a reader never
sees a partial one. Rows arrive one input file at a time and go straight to disk.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pandas as pd

PARQUET_SUFFIXES = (".parquet", ".pq")


class OutputError(Exception):
    """An output cannot be written; raised before any analysis work when possible."""


class _AtomicSink:
    """Context manager owning the temporary file; subclasses format the content."""

    def __init__(self, path: str | os.PathLike[str], template: pd.DataFrame) -> None:
        self.path = Path(path)
        #: An empty frame with the output's columns and dtypes, which every written frame is aligned to.
        self.template = template
        self.rows_written = 0
        self._tmp: Path | None = None

    def __enter__(self) -> Self:
        folder = self.path.parent
        if not folder.is_dir():
            raise OutputError(f"output folder does not exist: {folder}")
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        except OSError as exc:
            raise OutputError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
        self._tmp = Path(name)
        self._open(fd)
        return self

    def write(self, frame: pd.DataFrame) -> None:
        """Append rows, aligned to the template's columns (extra columns belong in the template)."""
        self._write(frame.reindex(columns=self.template.columns))
        self.rows_written += len(frame)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tmp is not None
        try:
            self._close(ok=exc_type is None)
            if exc_type is None:
                os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)

    def _open(self, fd: int) -> None:
        raise NotImplementedError

    def _write(self, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def _close(self, ok: bool) -> None:
        raise NotImplementedError


class CsvSink(_AtomicSink):
    """UTF-8 CSV with a header, empty cells for missing values and full float precision."""

    _fh: IO[str]

    def _open(self, fd: int) -> None:
        self._fh = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self._header_done = False

    def _write(self, frame: pd.DataFrame) -> None:
        frame.to_csv(self._fh, header=not self._header_done, index=False, na_rep="", lineterminator="\n")
        self._header_done = True

    def _close(self, ok: bool) -> None:
        if ok and not self._header_done:
            self._write(self.template)
        if ok:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        self._fh.close()


class ParquetSink(_AtomicSink):
    """Parquet via pyarrow (the `parquet` extra), one row group per written batch."""

    def _open(self, fd: int) -> None:
        os.close(fd)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise OutputError("Parquet output needs pyarrow: pip install 'emotion-batch[parquet]'") from exc
        self._pa = pa
        self._schema = pa.Schema.from_pandas(self.template, preserve_index=False)
        assert self._tmp is not None
        self._writer: Any = pq.ParquetWriter(str(self._tmp), self._schema)

    def _write(self, frame: pd.DataFrame) -> None:
        self._writer.write_table(self._pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False))

    def _close(self, ok: bool) -> None:
        self._writer.close()


def open_sink(path: str | os.PathLike[str], template: pd.DataFrame) -> _AtomicSink:
    """A CSV or Parquet sink for `path`, chosen by its extension."""
    suffix = Path(path).suffix.lower()
    return ParquetSink(path, template) if suffix in PARQUET_SUFFIXES else CsvSink(path, template)


def write_table(
    path: str | os.PathLike[str], frame: pd.DataFrame, template: pd.DataFrame | None = None
) -> None:
    """Write a whole table atomically."""
    with open_sink(path, frame.iloc[:0] if template is None else template) as sink:
        sink.write(frame)
