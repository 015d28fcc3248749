"""Running `analysis.process_file` on any `concurrent.futures.Executor`, largest files first.

`dispatch` feeds the per-file task to an executor - in this process (`InlineExecutor`), to isolated worker
processes (`isolation.IsolatedExecutor`), or to anything else with the Executor interface such as a Dask
client's `get_executor()` - and turns executor-level failures (a crashed worker, a timeout) into error records
too, so one bad file never stops a run.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from typing import Any

from ..analysis import FileResult, FrameCallback, Settings, error_result, init_worker, process_file
from ..media.sources import Source
from .isolation import IsolatedExecutor, TaskTimedOut, WorkerCrashed, report_frames
from .prestart import WORKER_MODULES, worker_environment


def failure_result(source: Source, settings: Settings, exc: BaseException) -> FileResult:
    """The record of a file whose task failed outside `process_file`: a dead or stopped worker."""
    if isinstance(exc, (TaskTimedOut, WorkerCrashed)):
        return error_result(source, settings, exc.kind, str(exc))
    if type(exc).__name__ == "KilledWorker":  # Dask: the task took down every worker it was tried on
        return error_result(
            source, settings, "crashed", f"Dask workers died while analysing this file: {exc}"
        )
    return error_result(source, settings, "internal", f"worker failed: {type(exc).__name__}: {exc}")


class InlineExecutor(Executor):
    """Runs each task in the calling thread at submission: the Executor interface without processes."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - delivered through the future, like other executors
                future.set_exception(exc)
        return future


class FrameCounter:
    """Frames reported from worker threads or processes, collected for the main thread's progress display."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._count += n

    def take(self) -> int:
        with self._lock:
            n, self._count = self._count, 0
            return n


@dataclass
class ExecutorPlan:
    """An executor with what to pass as each task's per-frame callback, and how many tasks to keep queued.

    `finish()` after the last result, `abort()` on errors or a second Ctrl-C (both idempotent; abort after
    finish does nothing), so callers need not know which kind of executor they hold.
    """

    executor: Executor
    frame_hook: FrameCallback | None
    window: int
    frames: FrameCounter | None = None
    #: Called once the executor is shut down (e.g. to close a Dask client).
    on_close: Callable[[], None] | None = None
    _closed: bool = field(default=False, init=False, repr=False)

    def finish(self) -> None:
        """Wait for the executor to wind down cleanly."""
        if not self._closed:
            self.executor.shutdown(wait=True)
            self._close()

    def abort(self) -> None:
        """Stop now: kill isolated workers, cancel what an executor allows to cancel."""
        if self._closed:
            return
        terminate = getattr(self.executor, "terminate", None)
        try:
            if terminate is not None:
                terminate()
            else:
                self.executor.shutdown(wait=False)
        finally:
            self._close()

    def _close(self) -> None:
        self._closed = True
        if self.on_close is not None:
            self.on_close()


#: Tasks submitted ahead per local worker. While the parent commits a burst of results (a few hundred ms for 64
#: small files), no task is submitted, so each worker needs that much work queued or it idles: with 2 ahead per
#: worker, 2,000 small photos kept the workers idle a third of the time. Queued tasks hold only their `Source`;
#: they are cancelled at once on Ctrl-C.
QUEUED_PER_WORKER = 32


def local_executor(
    settings: Settings,
    workers: int,
    *,
    isolate: bool,
    file_timeout: float | None = None,
    on_frame: FrameCallback | None = None,
    quiet: bool = True,
) -> ExecutorPlan:
    """This machine's executor: isolated worker processes, or this process when `isolate` is false."""
    if not isolate:
        return ExecutorPlan(InlineExecutor(), on_frame, 1)
    frames = FrameCounter()
    executor = IsolatedExecutor(
        workers,
        initializer=init_worker,
        initargs=(settings,),
        task_timeout=file_timeout,
        on_frames=frames.add,
        quiet=quiet,
        environment=worker_environment(settings.max_pixels, workers),
        preload=WORKER_MODULES,
    )
    return ExecutorPlan(executor, report_frames, QUEUED_PER_WORKER * workers, frames)


def expected_cost(source: Source) -> int:
    """A rough measure of a file's work, for starting the biggest files first.

    With several workers, a long video started last keeps one core busy while the others idle; starting the
    largest files first (longest-processing-time-first scheduling) evens out the finish. Videos cost far more
    than images, and a video's size tracks its decoding work (bitrate times duration).
    """
    if source.skip_reason:
        return 0
    try:
        size = source.path.stat().st_size
    except OSError:
        return 0
    return size * (64 if source.media_type == "video" else 1)


def dispatch(
    plan: ExecutorPlan,
    sources: Sequence[Source],
    settings: Settings,
    *,
    on_frames: FrameCallback | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    poll_s: float = 0.2,
) -> Iterator[FileResult]:
    """Run `process_file` for each source on the plan's executor, largest first; yield results as they complete.

    At most `plan.window` tasks are submitted ahead. When `should_stop()` turns true, nothing more is
    submitted, queued tasks are cancelled and only the files already being analysed are waited for and yielded.
    """
    todo = deque(sorted(sources, key=expected_cost, reverse=True))
    pending: dict[Future, tuple[int, Source]] = {}
    order = {s.source: i for i, s in enumerate(sources)}
    stopping = False
    while todo or pending:
        if not stopping and should_stop():
            stopping = True
            todo.clear()
            for future in list(pending):
                if future.cancel():  # succeeds only for tasks not yet started
                    del pending[future]
            if not pending:
                break
        while todo and len(pending) < plan.window:
            source = todo.popleft()
            future = plan.executor.submit(process_file, source, settings, plan.frame_hook)
            pending[future] = (order[source.source], source)
        done, _ = wait(list(pending), timeout=poll_s, return_when=FIRST_COMPLETED)
        if plan.frames is not None and on_frames is not None:
            n = plan.frames.take()
            if n:
                on_frames(n)
        for future in sorted(done, key=lambda f: pending[f][0]):
            _, source = pending.pop(future)
            if future.cancelled():
                continue
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - a crashed or timed-out worker, a broken executor
                result = failure_result(source, settings, exc)
            yield result
