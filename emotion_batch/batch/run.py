"""The run driver: the one loop that analyses a job's files, used by `emotion_batch.analyze()` and the command.

`drive` feeds the files to an executor and reports progress; every caller goes through it. `run` is a whole
run: without an output it collects the rows in memory; with one (`OutputPaths`) it is the incremental,
restartable run of `incremental`, under the output's lock, committing each file to the state store as it
completes and re-assembling the outputs at the end. Whatever stops a run is an exception with its own message
(`ConfigError`, `LockHeld`, `SettingsChanged`, `Interrupted`, `OutputError`, `StateError`), which the command
maps to an exit code in one table.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pandas as pd

from ..analysis import FileResult
from ..media.sources import Source
from ..output.progress import NoProgress, Progress
from ..output.sinks import OutputError
from ..schema import rows_frame, summary_frame
from .executors import ExecutorPlan, dispatch
from .incremental import IncrementalRun, Outcome, OutputPaths
from .job import ConfigError, Job, make_executor
from .locking import LockUnavailable, OutputLock
from .state import StateStore

log = logging.getLogger("emotion_batch")

StopCheck = Callable[[], bool]


class Interrupted(Exception):
    """A stop signal ended the run early; finished files are kept and the next run continues."""


def _never() -> bool:
    return False


def drive(
    plan: ExecutorPlan,
    sources: Sequence[Source],
    job: Job,
    progress: Progress,
    should_stop: StopCheck = _never,
) -> Iterator[FileResult]:
    """Analyse `sources` on the plan's executor, yielding each result as it completes (not in source order).

    Progress hears of a file once the caller has handled its result (committed it, for an incremental run).
    The executor is shut down at the end, and stopped at once when the caller stops early or fails.
    """
    progress.start(len(sources))
    streamed = plan.frame_hook is not None
    try:
        for result in dispatch(
            plan, sources, job.settings, on_frames=progress.frames, should_stop=should_stop
        ):
            yield result
            if not streamed:
                progress.frames(int(result.summary.get("frames_sampled") or 0))
            progress.file_done(result)
            for note in result.notes:
                log.warning("%s: %s", result.source.source, note)
        plan.finish()
    finally:
        plan.abort()  # a no-op after finish(); stops the workers on errors and a second Ctrl-C
        progress.close()


@dataclass
class InMemoryOutcome:
    """A run without an output: the rows and summary, in source order."""

    rows: pd.DataFrame
    summary: pd.DataFrame


def run_in_memory(
    job: Job, progress: Progress | None = None, should_stop: StopCheck = _never, quiet: bool = True
) -> InMemoryOutcome:
    """Analyse every file of the job and return the rows and summary in source order."""
    progress = progress or NoProgress()
    plan = make_executor(job, on_frame=progress.frames, quiet=quiet)
    order = {s.source: i for i, s in enumerate(job.sources)}
    results = sorted(
        drive(plan, job.sources, job, progress, should_stop), key=lambda r: order[r.source.source]
    )
    frames = [r.rows for r in results if len(r.rows)]
    rows = pd.concat(frames, ignore_index=True) if frames else rows_frame([])
    return InMemoryOutcome(rows, summary_frame(r.summary for r in results))


def run_incremental(
    prepare: Callable[[OutputPaths], Job],
    outputs: OutputPaths,
    *,
    force: bool = False,
    progress: Progress | None = None,
    should_stop: StopCheck = _never,
    quiet: bool = True,
    on_job: Callable[[Job], None] | None = None,
) -> Outcome:
    """One incremental run against `outputs`: lock, state store, plan, analyse, commit, re-assemble.

    `prepare` builds the job once the lock is held (it is told which paths are outputs, never inputs);
    `on_job` sees it before any file is analysed. A first signal (`should_stop`) lets the files in flight finish
    and raises `Interrupted`; so does a second one (KeyboardInterrupt), at once.
    """
    progress = progress or NoProgress()
    try:
        outputs.check_writable()
        fresh_state = not outputs.state_dir.exists()
        outputs.prepare_state_dir()
    except OutputError as exc:
        raise ConfigError(str(exc)) from exc
    lock = OutputLock(outputs.lock)
    state_used = False
    try:
        try:
            lock.acquire()
        except (LockUnavailable, OSError) as exc:
            raise ConfigError(str(exc)) from exc
        if lock.stale is not None:
            log.warning(
                "the previous run on %s (%s) did not finish (killed?); its finished files are kept and the "
                "rest is redone now",
                outputs.out,
                lock.stale.describe(),
            )
        outputs.remove_stale_temporaries()
        job = prepare(outputs)
        if on_job is not None:
            on_job(job)
        with StateStore(outputs.database) as state:
            state_used = True
            run = IncrementalRun(job, outputs, state)
            run.check_settings(force)
            plan = run.plan()
            log.info("%s", plan.describe())
            state.set_meta("last_plan", plan.record())
            executor = make_executor(job, quiet=quiet)
            done = 0
            for result in drive(executor, plan.process, job, progress, should_stop):
                run.commit(result)
                done += 1
            run.flush()  # the last burst of results (commits are grouped: see IncrementalRun.commit)
            if should_stop():
                signal_name = getattr(should_stop, "signal_name", None) or "a stop request"
                raise Interrupted(
                    f"interrupted by {signal_name}: {done} file(s) finished and saved in {outputs.state_dir}, "
                    f"{len(plan.process) - done} not started; {outputs.out} was left unchanged. Run the same "
                    "command again to continue (finished files are not redone)."
                )
            outcome = run.finish(plan, done)  # a first signal now waits for the (short) assembly
            signal_name = getattr(should_stop, "signal_name", None)
            if signal_name:  # arrived while the outputs were being written: they are complete
                log.warning("%s received; the outputs were completed first", signal_name)
            return outcome
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped at once: files that had finished are saved in {outputs.state_dir}, the ones in progress "
            f"will be redone; {outputs.out} was left unchanged. Run the same command again to continue."
        ) from None
    finally:
        lock.release()
        if fresh_state and not state_used:
            shutil.rmtree(outputs.state_dir, ignore_errors=True)  # nothing was done: leave no trace
