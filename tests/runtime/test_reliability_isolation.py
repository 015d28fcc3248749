"""Isolated workers: a crash or a hang costs one task, never the executor; workers die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool

import pytest

from emotion_batch.batch.isolation import IsolatedExecutor, TaskTimedOut, WorkerCrashed, describe_exit

from . import isolation_tasks as tasks
from .cli_runs import alive
from .environment import REPO


def test_crashes_hangs_and_errors_cost_only_their_own_task() -> None:
    frames: list[int] = []
    started = time.monotonic()
    with IsolatedExecutor(2, task_timeout=3, on_frames=frames.append) as executor:
        futures = {
            "ok": executor.submit(tasks.double, 21),
            "segfault": executor.submit(tasks.segfault, 0),
            "hang": executor.submit(tasks.hang, 0),
            "exit": executor.submit(tasks.exit_abruptly, 3),
            "error": executor.submit(tasks.fail, 7),
            "frames": executor.submit(tasks.count_frames, 5),
            "after": executor.submit(tasks.double, 50),
        }
        assert futures["ok"].result() == 42
        with pytest.raises(WorkerCrashed, match=r"killed by signal SIGSEGV \(11\) while analysing this file"):
            futures["segfault"].result()
        with pytest.raises(TaskTimedOut, match=r"no result after 3 s \(--file-timeout\)"):
            futures["hang"].result()
        with pytest.raises(WorkerCrashed, match="exited with code 3"):
            futures["exit"].result()
        with pytest.raises(ValueError, match="bad value 7"):
            futures["error"].result()
        assert futures["frames"].result() == 5
        assert futures["after"].result() == 100
    assert sum(frames) == 5
    assert time.monotonic() - started < 60


def test_frame_reports_are_coalesced_but_none_is_lost() -> None:
    """A thousand frames in a burst reach the parent as a few messages, and all before the task's result."""
    frames: list[int] = []
    with IsolatedExecutor(1, on_frames=frames.append) as executor:
        assert executor.submit(tasks.count_frames, 1000).result() == 1000
        assert sum(frames) == 1000  # the last report is sent before the result
        assert len(frames) <= 3
        assert executor.submit(tasks.count_frames, 7).result() == 7
        assert sum(frames) == 1007


def test_the_time_limit_counts_from_the_start_of_each_task() -> None:
    with IsolatedExecutor(1, task_timeout=2) as executor:
        hung = executor.submit(tasks.hang, 0)
        queued = executor.submit(tasks.double, 1)  # waits ~2 s for the only worker; must not time out
        with pytest.raises(TaskTimedOut):
            hung.result()
        assert queued.result() == 2


def test_shutdown_can_cancel_queued_tasks_and_terminate_stops_running_ones() -> None:
    executor = IsolatedExecutor(1)
    running = executor.submit(tasks.hang, 0)
    queued = executor.submit(tasks.double, 1)
    while not running.running():
        time.sleep(0.01)
    pids = executor.worker_pids
    executor.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    started = time.monotonic()
    executor.terminate()
    assert time.monotonic() - started < 10
    with pytest.raises(WorkerCrashed, match="stopped"):
        running.result()
    assert alive(pids) == []
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(tasks.double, 1)


def test_a_failing_initializer_breaks_the_executor_once_instead_of_respawning_forever() -> None:
    with IsolatedExecutor(1, initializer=tasks.broken_initializer) as executor:
        future = executor.submit(tasks.double, 1)
        with pytest.raises(BrokenProcessPool, match="model file unreadable"):
            future.result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            executor.submit(tasks.double, 2)


def test_workers_die_with_their_parent_even_when_it_is_sigkilled(tmp_path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from emotion_batch.batch.isolation import IsolatedExecutor
        from tests.runtime import isolation_tasks as tasks
        if __name__ == "__main__":
            executor = IsolatedExecutor(2)
            futures = [executor.submit(tasks.hang, 0) for _ in range(2)]
            while not all(f.running() for f in futures):
                time.sleep(0.01)
            print(*executor.worker_pids, flush=True)
            time.sleep(3600)
        """
    )
    path = tmp_path / "parent.py"
    path.write_text(script)
    parent = subprocess.Popen(
        [sys.executable, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(alive(workers)) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(workers) == [], "orphaned workers kept running after their parent was killed"


def test_workers_ignore_ctrl_c_so_the_files_in_flight_can_finish() -> None:
    with IsolatedExecutor(1) as executor:
        worker = executor.submit(tasks.pid).result()
        os.kill(worker, signal.SIGINT)
        os.kill(worker, signal.SIGTERM)
        time.sleep(0.3)
        assert executor.submit(tasks.pid).result() == worker  # same worker, still alive


@pytest.mark.parametrize(("code", "text"), [(-9, "killed by signal SIGKILL (9)"), (2, "exited with code 2")])
def test_describe_exit(code: int, text: str) -> None:
    assert describe_exit(code) == text


def test_cancelled_future_reports_cancellation() -> None:
    executor = IsolatedExecutor(1)
    executor.submit(tasks.hang, 0)
    queued = executor.submit(tasks.double, 1)
    assert queued.cancel()
    with pytest.raises(CancelledError):
        queued.result()
    executor.terminate()
