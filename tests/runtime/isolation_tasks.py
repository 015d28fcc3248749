"""Top-level task functions for the isolation tests (worker processes import them by name)."""

from __future__ import annotations

import os
import signal
import time


def double(x: int) -> int:
    return 2 * x


def segfault(_x: int) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def hang(_x: int) -> None:
    time.sleep(3600)


def exit_abruptly(code: int) -> None:
    os._exit(code)


def fail(x: int) -> None:
    raise ValueError(f"bad value {x}")


def count_frames(n: int) -> int:
    from emotion_batch.batch.isolation import report_frames

    for _ in range(n):
        report_frames(1)
    return n


def pid(_x: int = 0) -> int:
    return os.getpid()


def broken_initializer() -> None:
    raise RuntimeError("model file unreadable")
