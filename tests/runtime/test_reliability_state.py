"""The state store, the result shards and the output lock, on their own."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from emotion_batch.batch.locking import LockHeld, OutputLock
from emotion_batch.batch.shards import ShardStore, assemble, shard_name
from emotion_batch.batch.state import FileRecord, StateError, StateStore, explain_change, fingerprint_of
from emotion_batch.media.inspection import FileIdentity
from emotion_batch.output.sinks import open_sink
from emotion_batch.schema import rows_frame

from .environment import REPO
from .test_sinks import ROWS


def _record(source: str = "a.mp4", **changes) -> FileRecord:
    values = {
        "source": source,
        "path": os.fsencode("/data/caf\udce9/" + source),  # not valid UTF-8: stored as bytes
        "identity": FileIdentity(10, 123456789, "ab" * 32),
        "fingerprint": "f" * 16,
        "status": "ok",
        "error_kind": None,
        "shard": "s.csv",
        "shard_size": 99,
        "rows": 3,
        "summary": {"source": source, "faces": 2, "mean_happy": float("nan"), "error": None},
    }
    values.update(changes)
    return FileRecord(**values)


def test_records_round_trip_in_a_wal_database(tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite3"
    with StateStore(db) as state:
        state.record(_record())
        state.record(
            _record("b.jpg", status="error", error_kind="empty", shard=None, shard_size=None, rows=0)
        )
        state.touch("a.mp4", 987654321)
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with StateStore(db) as state:
        records = state.records()
    a = records["a.mp4"]
    assert a.path == b"/data/caf\xe9/a.mp4"
    assert a.identity == FileIdentity(10, 987654321, "ab" * 32)
    assert a.summary == {"source": "a.mp4", "faces": 2, "mean_happy": None, "error": None}  # NaN -> null
    assert (records["b.jpg"].status, records["b.jpg"].error_kind, records["b.jpg"].shard) == (
        "error",
        "empty",
        None,
    )


def test_reset_forgets_every_file_and_adopts_the_settings(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.sqlite3") as state:
        state.record(_record())
        state.reset({"model": {"sha256": "1" * 64}}, "fp")
        assert state.records() == {}
        assert state.get_meta("fingerprint") == "fp"
        assert state.get_meta("settings") == {"model": {"sha256": "1" * 64}}
        state.record(_record())
        state.forget(["a.mp4"])
        assert state.records() == {}


def test_a_state_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    with StateStore(db) as state:
        state.set_meta("schema_version", 99)
    with pytest.raises(StateError, match="newer emotion-batch"):
        StateStore(db)


def test_a_corrupt_state_store_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="cannot use the state store"):
        StateStore(db)


def test_settings_changes_are_explained() -> None:
    old = {
        "model": {"sha256": "1" * 64},
        "sampling": {"fps": None, "rate": 2.0},
        "detector": {"min_face": 20},
    }
    new = {"model": {"sha256": "2" * 64}, "sampling": {"fps": 5.0, "rate": 5.0}, "detector": {"min_face": 20}}
    assert explain_change(old, new) == (
        "model.sha256 111111111111 -> 222222222222, sampling.fps unset -> 5.0, sampling.rate 2.0 -> 5.0"
    )
    assert fingerprint_of(old) == fingerprint_of(dict(reversed(list(old.items()))))
    assert fingerprint_of(old) != fingerprint_of(new)


# --- shards ------------------------------------------------------------------------------------------------------
def test_shards_reassemble_to_exactly_what_a_single_write_gives(tmp_path: Path) -> None:
    shards = ShardStore(tmp_path / "shards")
    parts = [rows_frame(ROWS[:1]), rows_frame(ROWS[1:])]
    names = [shard_name(f"s{i}", "ab" * 32, "fp") for i in range(2)]
    for name, frame in zip(names, parts):
        shards.write(name, frame)
        assert shards.intact(name, shards.path(name).stat().st_size)
    assert not shards.intact(names[0], 1)
    out = tmp_path / "assembled.csv"
    assemble(out, shards, names)
    reference = tmp_path / "reference.csv"
    with open_sink(reference, rows_frame([])) as sink:
        for frame in parts:
            sink.write(frame)
    assert out.read_bytes() == reference.read_bytes()
    pd.testing.assert_frame_equal(shards.read(names[1]), rows_frame(ROWS[1:]), check_exact=True)


def test_parquet_is_assembled_from_the_same_shards(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    shards = ShardStore(tmp_path / "shards")
    shards.write("a.csv", rows_frame(ROWS))
    out = tmp_path / "r.parquet"
    assert assemble(out, shards, ["a.csv"]) == len(ROWS)
    pd.testing.assert_frame_equal(pd.read_parquet(out), rows_frame(ROWS), check_exact=True)


def test_prune_removes_orphans_and_temporaries(tmp_path: Path) -> None:
    shards = ShardStore(tmp_path / "shards")
    for name in ("keep.csv", "orphan.csv", ".keep.csv.x1y2.tmp"):
        (shards.folder / name).write_text("x")
    assert shards.prune(["keep.csv"]) == 2
    assert [p.name for p in shards.folder.iterdir()] == ["keep.csv"]


def test_shard_names_are_flat_and_unique_per_content_and_settings() -> None:
    a = shard_name("clips/../x.mp4", "ab" * 32, "fp1")
    assert "/" not in a and a.endswith(".csv")
    assert (
        len(
            {
                a,
                shard_name("clips/../x.mp4", "cd" * 32, "fp1"),
                shard_name("clips/../x.mp4", "ab" * 32, "fp2"),
            }
        )
        == 3
    )


# --- the lock ---------------------------------------------------------------------------------------------------
HOLDER = textwrap.dedent(
    """
    import sys, time
    from emotion_batch.batch.locking import OutputLock
    lock = OutputLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    time.sleep(3600)
    """
)


def _hold(lock: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_held_lock_is_refused_with_the_holders_details(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    holder = _hold(lock)
    try:
        started = time.monotonic()
        with pytest.raises(
            LockHeld, match=rf"already writing this output \(pid {holder.pid} on .*, started "
        ):
            OutputLock(lock).acquire()
        assert time.monotonic() - started < 1, "must not wait"
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_is_free_and_reported_as_stale(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    holder = _hold(lock)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with OutputLock(lock) as ours:
        assert ours.stale is not None and ours.stale.pid == holder.pid
    assert lock.read_text() == "", "a clean release leaves no holder behind"
    with OutputLock(lock) as again:
        assert again.stale is None
