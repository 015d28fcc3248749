"""Ctrl-C and SIGTERM: the first one asks the run to stop after the files in flight, the second stops at once.

Cron, systemd and container runtimes send SIGTERM to stop a job, a person presses Ctrl-C. Either way the files
being analysed are allowed to finish and are committed to the state store, nothing new is started, the
previous results stay untouched, and the next run continues where this one stopped. A second signal raises
KeyboardInterrupt for an immediate stop, which is still safe: only the files in flight are lost.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StopRequest:
    """Callable that turns true once a stop signal has arrived; `signal_name` says which."""

    def __init__(self, on_first: Callable[[str], None] | None = None) -> None:
        self.signal_name: str | None = None
        self._on_first = on_first
        self._announced = False

    def __call__(self) -> bool:
        if self.signal_name is not None and not self._announced:
            self._announced = True  # announced from the main loop, not from inside the signal handler
            if self._on_first is not None:
                self._on_first(self.signal_name)
        return self.signal_name is not None


@contextmanager
def stop_on_signals(
    on_first: Callable[[str], None] | None = None,
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[StopRequest]:
    """Install the two-stage handlers for the duration of the block (main thread only; elsewhere a no-op)."""
    request = StopRequest(on_first)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, _frame: object) -> None:
        if request.signal_name is None:
            request.signal_name = signal.Signals(signum).name
        else:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
