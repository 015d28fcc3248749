"""Helpers for the reliability tests: run or start the real `emotion-batch` command and look at its processes."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import pytest


def command() -> list[str]:
    exe = shutil.which("emotion-batch")
    return [exe] if exe else [sys.executable, "-m", "emotion_batch"]


def run(
    *args: str | os.PathLike[str],
    env: dict[str, str],
    timeout: float = 300,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run the command to completion; plain text output captured."""
    return subprocess.run(
        [*command(), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
        preexec_fn=preexec_fn,
    )


def start(*args: str | os.PathLike[str], env: dict[str, str], new_session: bool = False) -> subprocess.Popen:
    """Start the command in the background; stderr is a text pipe read line by line by the caller."""
    return subprocess.Popen(
        [*command(), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        start_new_session=new_session,
    )


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 120) -> list[str]:
    """Read stderr lines until one contains `needle`; return the lines read. Fails on timeout or exit."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            pytest.fail(f"the run ended before printing {needle!r}:\n" + "".join(lines))
        lines.append(line)
        if needle in line:
            return lines
    pytest.fail(f"no line with {needle!r} within {timeout} s:\n" + "".join(lines))


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Children, grandchildren and so on of `pid`: the fork server, the workers it forked, the resource tracker."""
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def is_worker(pid: int) -> bool:
    """A worker process: spawned (`spawn_main`), or forked by the fork server (whose command line it shares)."""
    if b"spawn_main" in _cmdline(pid):
        return True
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    return b"forkserver" in _cmdline(pid) and b"forkserver" in _cmdline(ppid)


def open_files(pid: int) -> list[str]:
    out = []
    try:
        for fd in (Path("/proc") / str(pid) / "fd").iterdir():
            try:
                out.append(os.readlink(fd))
            except OSError:
                pass
    except OSError:
        pass
    return out


def worker_with_open_file(parent: int, name: str, timeout: float = 120) -> int:
    """Wait until a worker of `parent` has a file ending in `name` open (it is analysing it); return its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in descendants(parent):
            if is_worker(pid) and any(f.endswith(name) for f in open_files(pid)):
                return pid
        time.sleep(0.01)
    pytest.fail(f"no worker of {parent} opened {name} within {timeout} s")


def alive(pids: Iterable[int]) -> list[int]:
    """The pids that still exist and are not zombies."""
    out = []
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def wait_for_lock_holder(out: Path, timeout: float = 60) -> int:
    """Wait until a run has taken the lock of `out`; return the holder's pid."""
    lock = out.with_name(out.name + ".state") / "lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = lock.read_text()
            if text.strip():
                return int(json.loads(text)["pid"])
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    pytest.fail(f"nobody took {lock} within {timeout} s")


def last_plan(out: Path) -> dict:
    """What the last run on `out` set out to do, as its state store records it (not the log's wording)."""
    import sqlite3

    with sqlite3.connect(f"file:{out}.state/state.sqlite3?mode=ro", uri=True) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'last_plan'").fetchone()
    return json.loads(value)


def plan(analysed: int = 0, kept: int = 0, skipped: int = 0, **reasons: int) -> dict:
    """A `last_plan` record: `plan(1, kept=3, new=1)`."""
    return {"analysed": analysed, "reasons": {k.replace("_", " "): n for k, n in reasons.items()}, "kept": kept,
            "skipped": skipped}  # fmt: skip


def summary_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(out.with_name(f"{out.stem}_summary{out.suffix}")).set_index("source")


def comparable_summary(out: Path) -> pd.DataFrame:
    """The summary without the timing column, which differs between any two runs."""
    return summary_of(out).drop(columns=["elapsed_s"])


# --- running as root: take away the power to ignore file permissions ----------------------------------------
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _PR_CAPBSET_DROP = 1, 2, 24


def _drop_dac_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def permission_respecting_preexec() -> Callable[[], None] | None:
    """A preexec_fn under which file permissions apply even to root, None when not root; skip if impossible.

    Root bypasses permission bits through CAP_DAC_OVERRIDE; dropping it from the bounding set before exec makes
    the command see "permission denied" like any user would, with real files and real chmod.
    """
    if os.geteuid() != 0:
        return None
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        locked = Path(tmp) / "locked"
        locked.write_text("secret")
        locked.chmod(0)
        try:
            probe = subprocess.run(
                [sys.executable, "-c", f"open({str(locked)!r}).read()"],
                preexec_fn=_drop_dac_capabilities,
                capture_output=True,
                check=False,
            )
        except subprocess.SubprocessError:
            probe = None
    if probe is None or b"PermissionError" not in probe.stderr:
        pytest.skip("running as root and unable to drop CAP_DAC_OVERRIDE: permissions cannot be tested here")
    return _drop_dac_capabilities


def sigkill(proc: subprocess.Popen) -> None:
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
