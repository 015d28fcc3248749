"""Writing tables: CSV, or Parquet when the path ends in .parquet, always through a temporary file.

A sink writes to a temporary file in the destination folder, flushes it to disk, and renames it over the
destination only when the `with` block finishes without error, so an existing results file is never left
half-written (not by a crash, a kill, nor a full disk) and a reader never sees a partial one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pandas as pd

from ..files import TEMP_SUFFIX, PendingFile, atomic_file, atomic_path, temp_prefix

__all__ = ["TEMP_SUFFIX", "OutputError", "atomic_output", "open_sink", "temp_prefix", "write_table"]

PARQUET_SUFFIXES = (".parquet", ".pq")


class OutputError(Exception):
    """An output cannot be written; raised before any analysis work when possible."""


def _failure(path: Path, exc: OSError) -> OutputError:
    previous = f"; the previous {path.name} is unchanged" if path.exists() else ""
    return OutputError(f"cannot write {path}: {exc.strerror or exc}{previous}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """`files.atomic_file` for an output: a binary handle, with OSError turned into OutputError."""
    target = Path(path)
    try:
        with atomic_file(target) as fh:
            yield fh
    except OSError as exc:
        raise _failure(target, exc) from exc


def csv_text(frame: pd.DataFrame, header: bool = True) -> str:
    """The exact CSV text of a frame: UTF-8, empty cells for missing values, full float precision."""
    return frame.to_csv(header=header, index=False, na_rep="", lineterminator="\n")


def write_csv_parts(path: str | os.PathLike[str], header: str, parts: Iterable[Path]) -> int:
    """Concatenate CSV parts (each with its own header line, dropped here) under one header, atomically.

    Returns the number of data rows. Parts are copied as bytes, so the result is byte-identical to writing
    the same frames in one go.
    """
    rows = 0
    with atomic_output(path) as out:
        out.write(header.encode("utf-8"))
        for part in parts:
            with open(part, "rb") as fh:
                fh.readline()
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    rows += chunk.count(b"\n")
                    out.write(chunk)
    return rows


class _AtomicSink:
    """Context manager owning the temporary file (`files.atomic_path`); subclasses format the content."""

    def __init__(self, path: str | os.PathLike[str], template: pd.DataFrame) -> None:
        self.path = Path(path)
        #: An empty frame with the output's columns and dtypes, which every written frame is aligned to.
        self.template = template
        self.rows_written = 0
        self._stack = contextlib.ExitStack()
        self._pending: PendingFile | None = None

    def __enter__(self) -> Self:
        folder = self.path.parent
        if not folder.is_dir():
            raise OutputError(f"output folder does not exist: {folder}")
        try:
            self._pending = self._stack.enter_context(atomic_path(self.path))
        except OSError as exc:
            raise OutputError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
        try:
            self._open(self._pending.path)
        except BaseException:
            self._stack.close()
            raise
        return self

    def write(self, frame: pd.DataFrame) -> None:
        """Append rows, aligned to the template's columns (extra columns belong in the template)."""
        try:
            self._write(frame.reindex(columns=self.template.columns))
        except OSError as exc:
            raise _failure(self.path, exc) from exc
        self.rows_written += len(frame)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pending is None:
            raise RuntimeError("__exit__ without __enter__")
        try:
            self._close(ok=exc_type is None)
            if exc_type is not None:
                self._pending.discard()
            self._stack.close()  # fsync, rename, fsync the folder; or remove the temporary file
        except OSError as error:
            self._stack.close()
            raise _failure(self.path, error) from error

    def _open(self, path: Path) -> None:
        raise NotImplementedError

    def _write(self, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def _close(self, ok: bool) -> None:
        raise NotImplementedError


class CsvSink(_AtomicSink):
    """UTF-8 CSV with a header, empty cells for missing values and full float precision."""

    _fh: IO[str]

    def _open(self, path: Path) -> None:
        self._fh = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 - closed in _close
        self._header_done = False

    def _write(self, frame: pd.DataFrame) -> None:
        self._fh.write(csv_text(frame, header=not self._header_done))
        self._header_done = True

    def _close(self, ok: bool) -> None:
        try:
            if ok and not self._header_done:
                self._write(self.template)
        finally:
            self._fh.close()


class ParquetSink(_AtomicSink):
    """Parquet via pyarrow (the `parquet` extra), one row group per written batch."""

    def _open(self, path: Path) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise OutputError("Parquet output needs pyarrow: pip install 'emotion-batch[parquet]'") from exc
        self._pa = pa
        self._schema = pa.Schema.from_pandas(self.template, preserve_index=False)
        self._writer: Any = pq.ParquetWriter(str(path), self._schema)

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
