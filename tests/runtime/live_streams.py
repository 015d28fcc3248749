"""Real streams on loopback for the live tests: ffmpeg serving a shared video at its native rate, and the live
command as a real subprocess.

Everything is bounded: servers and commands are killed at the end of their `with` block, waits have timeouts.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from emotion_batch.schema import ROW_COLUMNS

#: Runs the live command as a real process (until it is registered in cli.py as `emotion-batch live`).
LIVE_COMMAND = [sys.executable, "-c", "from emotion_batch.live.command import live_command; live_command()"]


def ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    if not found:
        pytest.skip(
            "ffmpeg not found (Debian: `apt-get install ffmpeg`); the live tests serve streams with it"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_url(protocol: str, port: int) -> str:
    return f"tcp://127.0.0.1:{port}" if protocol == "tcp" else f"http://127.0.0.1:{port}/live.ts"


def _stop(process: subprocess.Popen, grace: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)


@contextlib.contextmanager
def serve(video: Path, port: int, protocol: str = "tcp", loop: bool = True) -> Iterator[subprocess.Popen]:
    """ffmpeg serving `video` as MPEG-TS (stream copy, `-re`: native rate) to one client on 127.0.0.1:port."""
    args = [ffmpeg(), "-nostdin", "-loglevel", "error", "-re"]
    args += ["-stream_loop", "-1"] if loop else []
    args += ["-i", str(video), "-c", "copy", "-f", "mpegts"]
    if protocol == "tcp":
        args.append(f"tcp://127.0.0.1:{port}?listen=1")
    else:
        args += ["-listen", "1", stream_url("http", port)]
    process = subprocess.Popen(["nice", "-n", "10", *args], stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        _stop(process)


@contextlib.contextmanager
def live(
    *args: object, log: Path, env: dict[str, str] | None = None, **popen: object
) -> Iterator[subprocess.Popen]:
    """The live command as a subprocess, its stderr into `log`; killed at the end of the block if still running."""
    with open(log, "w", encoding="utf-8") as err:
        process = subprocess.Popen(
            ["nice", "-n", "10", *LIVE_COMMAND, *map(str, args)],
            stderr=err,
            env={**os.environ, **(env or {})},
            **popen,  # type: ignore[arg-type]
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)


def wait_for(condition: Callable[[], object], timeout: float, what: str, step: float = 0.1) -> object:
    """Poll `condition` until it is truthy, or fail naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def complete_lines(path: Path) -> list[str]:
    """The file's whole lines; the test fails if it does not end in a newline (a half-written row)."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path} ends in a partial line: {text[-200:]!r}"
    return text.splitlines()


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows, checking the header is batch mode's and every line has every column."""
    lines = complete_lines(path)
    assert lines and lines[0].split(",") == list(ROW_COLUMNS)
    rows = list(csv.DictReader(lines))
    assert all(None not in r and len(r) == len(ROW_COLUMNS) for r in rows)
    return rows


def data_rows(path: Path) -> int:
    """Rows so far (0 when the file is not there yet); only whole lines count."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0
    return max(0, text.count("\n") - 1)


def send(process: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
    """Signal the process (not a `nice` wrapper: nice execs it) and wait for its exit code."""
    process.send_signal(signum)
    return process.wait(timeout)
