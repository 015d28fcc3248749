"""Crash- and hang-proof worker processes behind the standard `concurrent.futures.Executor` interface.

`ProcessPoolExecutor` is not enough for untrusted media: one decoder segfault marks the whole pool broken (every
later submission fails), and a decoder stuck on one file can never be stopped. `IsolatedExecutor` keeps its own
workers, one task at a time each, and watches them from a supervisor thread:
- a worker that dies fails only the task it was running (`WorkerCrashed`) and is replaced;
- a task that runs longer than `task_timeout` seconds has its worker killed (`TaskTimedOut`) and replaced;
- workers ignore SIGINT/SIGTERM, so Ctrl-C in a terminal lets the parent finish the files in flight, and they
  die with the parent, so a SIGKILLed run leaves no orphans decoding in the background.
The time limit counts from when a worker starts the task, not from submission or worker start-up.

Workers are forked from a fork server (Linux) that has already imported the modules named in `preload`, so a
new worker is ready in milliseconds instead of importing numpy, OpenCV, onnxruntime and pandas itself (about
0.5 s of CPU each). The server does nothing but import (its only other threads are those libraries' idle thread
pools), so forking it is safe, unlike forking a parent that runs progress and supervisor threads.
`start_fork_server` starts it early (see `prestart`), so its imports overlap the parent's own start-up.
Elsewhere, workers are spawned.
Only the standard library is imported here, so the module has no heavy dependencies.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.context
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger(__name__)

# How long a stopping worker may take to exit after being asked before it is killed.
_STOP_GRACE_S = 5.0
# Consecutive worker start-up deaths after which the executor gives up (a broken installation, not a bad file).
_MAX_START_FAILURES = 3
# How often a worker checks that its parent is still alive (a fallback for non-Linux systems).
_PARENT_POLL_S = 0.5


class WorkerCrashed(Exception):
    """The worker process running the task died (a crash in native code, the OOM killer, a stray kill)."""

    #: The summary's `error_kind` for the file it was analysing.
    kind = "crashed"


class TaskTimedOut(Exception):
    """The task ran longer than the executor's time limit; its worker was killed."""

    kind = "timeout"


def describe_exit(exitcode: int | None) -> str:
    """ "killed by signal SIGSEGV (11)" or "exited with code 3"."""
    if exitcode is None:
        return "stopped"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by signal {name} ({-exitcode})"
    return f"exited with code {exitcode}"


# --- the worker side -------------------------------------------------------------------------------------------
_channel: Connection | None = None
_channel_lock = threading.Lock()
#: Frame counts are sent at most this often (and when a task ends): one message per frame cost the worker and
#: the parent's supervisor a pipe round each, hundreds of times a second in every-frame mode.
REPORT_INTERVAL_S = 0.2
_unreported = 0
_last_report = 0.0


def report_frames(n: int) -> None:
    """Tell the parent that `n` more frames were analysed; a no-op outside an isolated worker.

    A module-level function, so it can be passed (pickled by name) as a per-frame progress callback.
    """
    global _unreported
    if _channel is None:
        return
    _unreported += n
    if time.monotonic() - _last_report >= REPORT_INTERVAL_S:
        _send_frame_report()


def _send_frame_report() -> None:
    global _unreported, _last_report
    _last_report = time.monotonic()
    if _unreported and _channel is not None:
        with _channel_lock, contextlib.suppress(OSError):
            _channel.send(("frames", _unreported))
        _unreported = 0


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker exit as soon as the parent that runs the executor is gone, even after a SIGKILL.

    A forked worker's own parent is the fork server, so the executor's process is watched directly: on Linux
    through a pidfd, which becomes readable the moment that process exits; elsewhere by polling its existence.
    The worker does not die with the fork server, so a SIGTERM sent to the whole process group (which the
    server does not survive) still lets the workers finish their files for the parent, as they do when spawned.
    """
    if not _alive(parent_pid):  # gone before this worker started watching
        os._exit(1)

    def watch() -> None:
        try:
            fd = os.pidfd_open(parent_pid)
        except (AttributeError, OSError):  # not Linux 5.3+: poll
            while _alive(parent_pid):
                time.sleep(_PARENT_POLL_S)
            os._exit(1)
        select.select([fd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _silence_output() -> None:
    """Native libraries print to fds 1 and 2 (libpng, FFmpeg); cron logs must stay plain, stdout empty."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it can cross the pipe, else a RuntimeError carrying its text."""
    import pickle  # our own objects over our own pipe; nothing read from input files is unpickled

    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own object, round-tripped in memory
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _worker_main(
    conn: Connection, parent_pid: int, quiet: bool, init_blob: bytes, environment: dict[str, str]
) -> None:
    """Run tasks sent by the parent, one at a time, until told to stop or the parent goes away.

    The initializer arrives pickled, and is unpickled only here, after the signal handlers are set: unpickling
    it imports the heavy modules, and a Ctrl-C during those seconds must not kill the worker.
    """
    global _channel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    os.environ.update(environment)  # a forked worker inherits the fork server's environment, not the parent's
    if quiet:
        _silence_output()
    _channel = conn
    try:
        import pickle  # the parent's own initializer, pickled by the parent for this worker

        initializer, initargs = pickle.loads(init_blob)  # noqa: S301 - made by our parent, over our pipe
        if initializer is not None:
            initializer(*initargs)
    except BaseException as exc:  # noqa: BLE001
        conn.send(("init_failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        fn, args, kwargs = job
        try:
            message = ("done", (True, fn(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001
            message = ("done", (False, _portable(exc)))
        _send_frame_report()  # the task's last frames, before its result
        with _channel_lock:
            try:
                conn.send(message)
            except (EOFError, OSError):
                return
            except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
                conn.send(("done", (False, RuntimeError(f"the result could not be sent back: {exc}"))))


# --- the parent side -------------------------------------------------------------------------------------------
def _fork_server_usable() -> bool:
    return sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods()


def _worker_context(
    preload: Sequence[str],
) -> multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext:
    """Fork from a preloaded fork server where there is one (Linux); else spawn. Never fork this process."""
    if not _fork_server_usable():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    if preload:
        context.set_forkserver_preload(list(preload))  # no effect once the server runs: it keeps its modules
    return context


def start_fork_server(preload: Sequence[str], environment: dict[str, str] | None = None) -> None:
    """Start the fork server now, without waiting for its imports, so they overlap the caller's own work.

    `environment` is set for the server's start: libraries that read a variable when they load (OpenCV's
    OPENCV_IO_MAX_IMAGE_PIXELS) see it. The server lives as long as this process and keeps what it loaded.
    """
    if not _fork_server_usable():
        return
    from multiprocessing import forkserver

    _worker_context(preload)
    with _environment(environment or {}):
        forkserver.ensure_running()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set, restored afterwards: what a child process started inside inherits."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class _Task:
    future: Future
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process (forkserver or spawn context)
    conn: Connection
    ready: bool = False
    task: _Task | None = None
    deadline: float | None = None
    stopping: bool = False
    ident: int = 0
    started: float = field(default_factory=time.monotonic)


class IsolatedExecutor(Executor):
    """Runs each task in a worker process that may crash or hang without affecting the other tasks.

    Parameters mirror ProcessPoolExecutor's (`max_workers`, `initializer`, `initargs`), plus `task_timeout`
    (seconds per task; None for no limit), `on_frames` (called in a background thread with frame counts sent
    by `report_frames`), `quiet` (send the workers' native stdout/stderr chatter to /dev/null), `environment`
    (variables set in each worker) and `preload` (modules the fork server imports once for all workers).
    """

    def __init__(
        self,
        max_workers: int,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple = (),
        task_timeout: float | None = None,
        on_frames: Callable[[int], None] | None = None,
        quiet: bool = True,
        environment: dict[str, str] | None = None,
        preload: Sequence[str] = (),
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError("task_timeout must be a positive number of seconds")
        import pickle

        self._max_workers = max_workers
        self._init_blob = pickle.dumps((initializer, initargs))
        self._timeout = task_timeout
        self._on_frames = on_frames
        self._quiet = quiet
        self._environment = environment or {}
        self._context = _worker_context(preload)
        self._lock = threading.Lock()
        self._queue: deque[_Task] = deque()
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._shutdown = False
        self._terminate = False
        self._broken: str | None = None
        self._start_failures = 0
        self._wake_lock = threading.Lock()
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        self._wake_w: int | None = wake_w
        self._thread = threading.Thread(target=self._supervise, name="emotion-batch-supervisor", daemon=True)
        self._thread.start()

    # Executor API -----------------------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._broken:
                raise BrokenProcessPool(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future = Future()
            self._queue.append(_Task(future, fn, args, kwargs))
        self._wake()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; with `wait`, let running (and, unless cancelled, queued) tasks finish first."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                self._cancel_queued()
        self._wake()
        if wait:
            self._thread.join()

    def terminate(self) -> None:
        """Kill every worker now; running tasks fail with CancelledError-like errors. For a second Ctrl-C."""
        with self._lock:
            self._shutdown = self._terminate = True
            self._cancel_queued()
        self._wake()
        self._thread.join()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for diagnostics and tests)."""
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.pid is not None]

    # Supervisor ------------------------------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_w is not None:  # closed once the supervisor has finished
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(self._wake_w, b"x")

    def _cancel_queued(self) -> None:
        while self._queue:
            future = self._queue.popleft().future
            if future.cancel():
                future.set_running_or_notify_cancel()  # wakes concurrent.futures.wait() callers

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(child_conn, os.getpid(), self._quiet, self._init_blob, self._environment),
            name="emotion-batch-worker",
            daemon=True,
        )
        with _environment(
            self._environment
        ):  # read at start by a spawned worker or a fork server started now
            process.start()
        child_conn.close()
        worker = _Worker(process=process, conn=parent_conn, ident=next(self._ids))
        self._workers.append(worker)
        return worker

    def _retire(self, worker: _Worker, kill: bool) -> None:
        if kill and worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=None if kill else _STOP_GRACE_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        if worker in self._workers:
            self._workers.remove(worker)

    def _fail(self, worker: _Worker, exc: BaseException) -> None:
        task, worker.task, worker.deadline = worker.task, None, None
        if task is not None and not task.future.done():
            task.future.set_exception(exc)

    def _mark_broken(self, reason: str) -> None:
        with self._lock:
            self._broken = reason
            queued = list(self._queue)
            self._queue.clear()
        for task in queued:
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(BrokenProcessPool(reason))

    def _dispatch(self) -> None:
        """Give queued tasks to idle ready workers; start workers while there is queued work and room."""
        with self._lock:
            for worker in self._workers:
                if not worker.ready or worker.task is not None or worker.stopping:
                    continue
                while self._queue:
                    task = self._queue.popleft()
                    if task.future.set_running_or_notify_cancel():
                        break
                else:
                    break
                try:
                    worker.conn.send((task.fn, task.args, task.kwargs))
                except Exception as exc:  # noqa: BLE001 - unpicklable task, or the worker just died
                    task.future.set_exception(exc)
                    continue
                worker.task = task
                worker.deadline = time.monotonic() + self._timeout if self._timeout else None
            idle = sum(1 for w in self._workers if w.task is None and not w.stopping)
            wanted = min(len(self._queue) - idle, self._max_workers - len(self._workers))
            broken = self._broken
        if broken is None:
            for _ in range(max(0, wanted)):
                self._start_worker()

    def _handle_message(self, worker: _Worker) -> None:
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            self._on_death(worker)
            return
        except Exception as exc:  # noqa: BLE001 - a result that cannot be unpickled here
            self._fail(worker, RuntimeError(f"the result could not be read: {exc}"))
            return
        if kind == "ready":
            worker.ready = True
            self._start_failures = 0
        elif kind == "frames":
            if self._on_frames is not None:
                with contextlib.suppress(Exception):
                    self._on_frames(int(payload))
        elif kind == "done":
            ok, value = payload
            task, worker.task, worker.deadline = worker.task, None, None
            if task is not None and not task.future.done():
                if ok:
                    task.future.set_result(value)
                else:
                    task.future.set_exception(value)
        elif kind == "init_failed":
            self._retire(worker, kill=True)
            self._mark_broken(f"a worker process could not start: {payload}")

    def _on_death(self, worker: _Worker) -> None:
        worker.process.join(timeout=_STOP_GRACE_S)
        how = describe_exit(worker.process.exitcode)
        if worker.task is not None:
            self._fail(worker, WorkerCrashed(f"the worker process {how} while analysing this file"))
        elif not worker.ready and not worker.stopping and not self._shutdown:
            self._start_failures += 1
            if self._start_failures >= _MAX_START_FAILURES:
                self._retire(worker, kill=True)
                self._mark_broken(f"worker processes keep dying while starting (last one {how})")
                return
        self._retire(worker, kill=True)

    def _expire(self, now: float) -> None:
        for worker in list(self._workers):
            if worker.task is not None and worker.deadline is not None and now >= worker.deadline:
                worker.process.kill()
                self._fail(
                    worker,
                    TaskTimedOut(
                        f"no result after {self._timeout:g} s (--file-timeout); the worker was stopped"
                    ),
                )
                self._retire(worker, kill=True)

    def _finished(self) -> bool:
        with self._lock:
            if self._terminate:
                return True
            return self._shutdown and not self._queue and all(w.task is None for w in self._workers)

    def _supervise(self) -> None:
        try:
            while not self._finished():
                self._dispatch()
                deadlines = [w.deadline for w in self._workers if w.deadline is not None]
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                handles: dict[Any, tuple[str, _Worker | None]] = {self._wake_r: ("wake", None)}
                for worker in self._workers:
                    handles[worker.conn] = ("conn", worker)
                    handles[worker.process.sentinel] = ("exit", worker)
                ready = wait(list(handles), timeout=timeout)
                # Messages first: a worker may have sent its result just before exiting.
                for handle in sorted(ready, key=lambda h: handles[h][0] != "conn"):
                    what, peer = handles[handle]
                    if what == "wake" or peer is None:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                    elif peer in self._workers:
                        if what == "conn":
                            self._handle_message(peer)
                        elif not peer.conn.poll():
                            self._on_death(peer)
                self._expire(time.monotonic())
        except BaseException as exc:
            log.debug("supervisor failed", exc_info=True)
            self._mark_broken(f"the worker supervisor failed: {exc}")
        finally:
            self._stop_all()

    def _stop_all(self) -> None:
        kill = self._terminate or self._broken is not None
        for worker in list(self._workers):
            if worker.task is not None:
                self._fail(worker, WorkerCrashed("the run was stopped while this file was being analysed"))
            worker.stopping = True
            if not kill:
                with contextlib.suppress(Exception):
                    worker.conn.send(None)
        for worker in list(self._workers):
            self._retire(worker, kill=kill)
        with self._lock:
            leftovers = list(self._queue)
            self._queue.clear()
        for task in leftovers:
            if task.future.cancel():
                task.future.set_running_or_notify_cancel()
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._wake_w = None
