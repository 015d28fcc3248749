"""The state store: which files are done, with which identity and settings, and where their rows are.

It lives beside the output (`results.csv.state/state.sqlite3`) and is what makes nightly runs incremental and
restartable. SQLite from the standard library, in WAL mode with synchronous=FULL: a file's record (or those of
a burst of files finishing together) is one transaction, so a run killed at any instant leaves either the whole
record or none of it, and a reader (say, a
monitoring script) never blocks the writer. Values are plain JSON and text; nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from ..media.inspection import FileIdentity

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    source      TEXT PRIMARY KEY,  -- the file's name in the outputs (relative to its input root)
    path        BLOB NOT NULL,     -- absolute path as bytes (file names need not be UTF-8)
    size        INTEGER,
    mtime_ns    INTEGER,
    sha256      TEXT,
    fingerprint TEXT NOT NULL,     -- the settings (model, detector, sampling) that produced the record
    status      TEXT NOT NULL,     -- ok or error
    error_kind  TEXT,
    shard       TEXT,              -- file name of the rows shard, NULL when there are no rows
    shard_size  INTEGER,
    rows        INTEGER NOT NULL,
    summary     TEXT NOT NULL,     -- the summary row, as JSON
    finished_at TEXT NOT NULL
);
"""


class StateError(Exception):
    """The state store cannot be used (unreadable, from a newer version, or disk errors)."""


@dataclass(frozen=True)
class FileRecord:
    """One analysed file as the state store remembers it."""

    source: str
    path: bytes
    identity: FileIdentity | None
    fingerprint: str
    status: str
    error_kind: str | None
    shard: str | None
    shard_size: int | None
    rows: int
    summary: Mapping[str, Any]
    finished_at: str = ""


def _clean(value: Any) -> Any:
    """JSON-safe summary values: NaN and pandas' NA become null, numpy scalars become Python numbers."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return value


class StateStore:
    """Open (creating if needed) the state database of one output. Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            version = self.get_meta("schema_version")
            if version is None:
                self.set_meta("schema_version", SCHEMA_VERSION)
            elif int(version) > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path} was written by a newer emotion-batch (state schema {version}); upgrade, or "
                    "use --force to start the state over"
                )
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot use the state store {self.path}: {exc}") from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError:
            pass  # a busy reader or a full disk: the WAL is simply kept for next time
        self._db.close()

    # meta ---------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self._write(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value, sort_keys=True)),
        )

    # files ----------------------------------------------------------------------------------------------------
    def records(self) -> dict[str, FileRecord]:
        """Every file record, by source name."""
        out: dict[str, FileRecord] = {}
        query = (
            "SELECT source, path, size, mtime_ns, sha256, fingerprint, status, error_kind, shard, shard_size, "
            "rows, summary, finished_at FROM files"
        )
        for row in self._db.execute(query):
            (source, path, size, mtime_ns, sha, fingerprint, status, kind, shard, shard_size, rows, summary,
             finished) = row  # fmt: skip
            identity = FileIdentity(size, mtime_ns, sha) if sha is not None else None
            out[source] = FileRecord(
                source, bytes(path), identity, fingerprint, status, kind, shard, shard_size, rows,
                json.loads(summary), finished,
            )  # fmt: skip
        return out

    def record(self, rec: FileRecord) -> None:
        """Store (or replace) one file's record in a single transaction."""
        self.record_many([rec])

    def record_many(self, recs: Iterable[FileRecord]) -> None:
        """Store (or replace) several files' records in a single transaction: all of them or none."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        params = []
        for rec in recs:
            ident = rec.identity
            summary = json.dumps({k: _clean(v) for k, v in rec.summary.items()}, sort_keys=True)
            params.append((
                rec.source, rec.path, ident.size if ident else None, ident.mtime_ns if ident else None,
                ident.sha256 if ident else None, rec.fingerprint, rec.status, rec.error_kind, rec.shard,
                rec.shard_size, rec.rows, summary, rec.finished_at or now,
            ))  # fmt: skip
        if params:
            self._write_many(
                "INSERT OR REPLACE INTO files (source, path, size, mtime_ns, sha256, fingerprint, status, "
                "error_kind, shard, shard_size, rows, summary, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )

    def touch(self, source: str, mtime_ns: int) -> None:
        """Remember a new modification time for a file whose content (sha256) did not change."""
        self._write("UPDATE files SET mtime_ns = ? WHERE source = ?", (mtime_ns, source))

    def forget(self, sources: Iterable[str]) -> None:
        """Drop records (e.g. of files that no longer exist) in one transaction."""
        names = [(s,) for s in sources]
        if names:
            self._write_many("DELETE FROM files WHERE source = ?", names)

    def reset(self, settings: Mapping[str, Any], fingerprint: str) -> None:
        """Start over with new settings (--force, or a first run): no file is done any more."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM files")
            for key, value in (
                ("settings", dict(settings)),
                ("fingerprint", fingerprint),
                ("assembled", None),
            ):
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
                )
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._rollback()
            raise StateError(f"cannot update the state store {self.path}: {exc}") from exc

    # helpers --------------------------------------------------------------------------------------------------
    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _write(self, sql: str, params: tuple) -> None:
        self._write_many(sql, [params])

    def _write_many(self, sql: str, params: list[tuple]) -> None:
        """One immediate transaction for all rows, so a kill leaves either all of them or none."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(sql, params)
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._rollback()
            raise StateError(f"cannot update the state store {self.path}: {exc}") from exc


def fingerprint_of(settings: Mapping[str, Any]) -> str:
    """A short stable hash of the settings that decide the rows."""
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def explain_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """ "model.sha256 1a2b3c4d5e6f -> 9f8e7d6c5b4a, sampling.fps 2.0 -> 5.0": what differs between two settings."""

    def show(v: Any) -> str:
        if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
            return v[:12]  # a sha256
        return "unset" if v is None else str(v)

    a, b = _flatten(old), _flatten(new)
    changes = [
        f"{k} {show(a.get(k))} -> {show(b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]
    return ", ".join(changes) or "no visible difference"
