"""Charts off the critical path: one background thread in the parent draws them while the workers analyse.

The parent mostly waits for results, so a chart drawn there as a file's result arrives costs the run little
wall time, especially near the end, when the last files keep fewer workers than cores busy. Pillow is
imported in that thread as soon as the drawer starts, while the workers load their models. One thread, so
charts are drawn in the order they were submitted. `wait()` returns once everything submitted is done;
a failed job is logged, never raised (a chart problem never fails a run).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger("emotion_batch")


def _warm_up() -> None:
    from PIL import Image, ImageDraw, ImageFont, PngImagePlugin  # noqa: F401


class Drawer:
    """Runs chart jobs in one background thread, in submission order."""

    def __init__(self, enabled: bool = True) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="emotion-batch-charts") if enabled else None
        self._pending: list[Future[Any]] = []
        if self._pool is not None:
            self._pending.append(self._pool.submit(_warm_up))

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        """Run `job(*args)` in the background (or at once when the drawer is disabled)."""
        if self._pool is None:
            self._run(job, *args)
        else:
            self._pending.append(self._pool.submit(self._run, job, *args))

    @staticmethod
    def _run(job: Callable[..., Any], *args: Any) -> None:
        try:
            job(*args)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not draw %s: %s", getattr(job, "__name__", job), exc)

    def wait(self) -> None:
        """Block until every job submitted so far has finished."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.exception()

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
