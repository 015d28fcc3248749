"""One run at a time per output: an exclusive lock on `<out>.state/lock`, taken before any work.

The lock is an OS file lock (flock), not the mere existence of a file, so it cannot go stale: the kernel
releases it the moment its process ends, however it ends (SIGKILL, OOM, power cut). A second run finds it
held and exits at once with EXIT_LOCKED instead of waiting or interleaving writes. The file's content (pid, host,
start time) is only information for the message; a leftover content from a killed run is reported and
overwritten ("stale-lock recovery"), never trusted.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class LockHeld(Exception):
    """Another live run holds the lock; the message says which process."""


class LockUnavailable(Exception):
    """The lock cannot be taken on this filesystem at all (no flock support)."""


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"


def _read_holder(fd: int) -> Holder | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        data = json.loads(raw.decode("utf-8")) if raw.strip() else None
        return Holder(int(data["pid"]), str(data["host"]), str(data["started"])) if data else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


class OutputLock:
    """`with OutputLock(path) as lock:` holds the lock; `lock.stale` names a previous holder that died."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.stale: Holder | None = None
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            raise LockUnavailable("file locking needs a POSIX system")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = holder.describe() if holder else "a process that has not written its details yet"
            raise LockHeld(
                f"another emotion-batch run is already writing this output ({who}); it holds the lock "
                f"{self.path}, which is released automatically when that run ends"
            ) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise LockUnavailable(
                    f"cannot lock {self.path}: this filesystem does not support file locks; put --out on a "
                    "local disk"
                ) from exc
            raise
        # The lock is ours. Content left behind means the previous run ended without releasing it.
        self.stale = _read_holder(fd)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Clear the holder details (a clean end) and unlock. The file stays: deleting it would race."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
