"""Writing tables: CSV, or Parquet when the path ends in .parquet, always through a temporary file.

A sink writes to a temporary file in the destination folder, flushes it to disk, and renames it over the
destination only when the `with` block finishes without error, so an existing results file is never left
half-written (not by a crash, a kill, nor a full disk) and a reader never sees a partial one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, Self

import pandas as pd

PARQUET_SUFFIXES = (".parquet", ".pq")
#: Prefix and suffix of the temporary files; leftovers of killed runs are recognised (and removed) by them.
TEMP_SUFFIX = ".tmp"


# Temporary files are created 0600; outputs get the permissions a plain open() would give them.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class OutputError(Exception):
    """An output cannot be written; raised before any analysis work when possible."""


def _mkstemp(target: Path) -> tuple[int, str]:
    fd, name = tempfile.mkstemp(prefix=temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, name


def temp_prefix(path: Path) -> str:
    """Hidden, so a temporary output inside an input folder is never picked up as an input."""
    return f".{path.name}."


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (the new directory entry reaches the disk)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _failure(path: Path, exc: OSError) -> OutputError:
    previous = f"; the previous {path.name} is unchanged" if path.exists() else ""
    return OutputError(f"cannot write {path}: {exc.strerror or exc}{previous}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces `path` only if the block completes; OSError -> OutputError."""
    target = Path(path)
    try:
        fd, name = _mkstemp(target)
    except OSError as exc:
        raise _failure(target, exc) from exc
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_folder(target.parent)
    except OSError as exc:
        raise _failure(target, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def csv_text(frame: pd.DataFrame, header: bool = True) -> str:
    """The exact CSV text of a frame: UTF-8, empty cells for missing values, full float precision."""
    return frame.to_csv(header=header, index=False, na_rep="", lineterminator="\n")


def write_csv_parts(path: str | os.PathLike[str], header: str, parts: Iterable[Path]) -> int:
    """Concatenate CSV parts (each with its own header line, dropped here) under one header, atomically.

    Returns the number of data rows. Parts are copied as bytes, so the result is byte-identical to writing
    the same frames in one go.
    """
    rows = 0
    with atomic_file(path) as out:
        out.write(header.encode("utf-8"))
        for part in parts:
            with open(part, "rb") as fh:
                fh.readline()
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    rows += chunk.count(b"\n")
                    out.write(chunk)
    return rows


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
            fd, name = _mkstemp(self.path)
        except OSError as exc:
            raise OutputError(f"cannot write to {folder}: {exc.strerror or exc}") from exc
        self._tmp = Path(name)
        self._open(fd)
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
        assert self._tmp is not None
        try:
            self._close(ok=exc_type is None)
            if exc_type is None:
                os.replace(self._tmp, self.path)
                fsync_folder(self.path.parent)
        except OSError as error:
            raise _failure(self.path, error) from error
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
        self._fh.write(csv_text(frame, header=not self._header_done))
        self._header_done = True

    def _close(self, ok: bool) -> None:
        try:
            if ok and not self._header_done:
                self._write(self.template)
            if ok:
                self._fh.flush()
                os.fsync(self._fh.fileno())
        finally:
            with contextlib.suppress(OSError):  # a failed flush was reported above; close must not mask it
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
