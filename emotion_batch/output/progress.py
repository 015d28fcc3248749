"""How a run reports progress: tqdm for the Python API (notebooks too), rich on a terminal, log lines for cron.

The pipeline only calls the small `Progress` interface, so it does not know which display is in use. All calls
come from the main thread; frames analysed in worker processes are relayed to it by `batch.executors`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ..analysis import FileResult

log = logging.getLogger("emotion_batch")


class Progress(Protocol):
    def start(self, files: int) -> None: ...
    def frames(self, n: int) -> None: ...
    def file_done(self, result: FileResult) -> None: ...
    def close(self) -> None: ...


def describe(result: FileResult) -> str:
    """One line about a finished file, for logs and progress displays."""
    s = result.summary
    if result.status != "ok":
        return f"{result.status} {result.source.source}: {result.error}"
    return (
        f"ok {result.source.source}: {s['frames_sampled']} frame(s), {s['faces']} face(s), "
        f"{s['tracks']} track(s), {s.get('elapsed_s', 0.0):.1f} s"
    )


class NoProgress:
    def start(self, files: int) -> None:
        pass

    def frames(self, n: int) -> None:
        pass

    def file_done(self, result: FileResult) -> None:
        pass

    def close(self) -> None:
        pass


class LogProgress(NoProgress):
    """Plain log lines, one per file: what cron mail and log files want."""

    def start(self, files: int) -> None:
        self._total, self._done = files, 0

    def file_done(self, result: FileResult) -> None:
        self._done += 1
        level = logging.INFO if result.status != "error" else logging.ERROR
        log.log(level, "[%d/%d] %s", self._done, self._total, describe(result))


class TqdmProgress(NoProgress):
    """A files bar with a frames counter, via tqdm.auto so it renders as a widget in notebooks."""

    def start(self, files: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=files, unit="file", desc="emotion-batch")
        self._frames = 0

    def frames(self, n: int) -> None:
        self._frames += n
        self._bar.set_postfix(frames=self._frames, refresh=False)

    def file_done(self, result: FileResult) -> None:
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


class RichProgress(NoProgress):
    """Two live bars on a terminal (files, sampled frames); per-file outcomes are logged above them."""

    def __init__(self, console: Any) -> None:
        self._console = console

    def start(self, files: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=self._console,
            transient=True,
        )
        self._files = self._progress.add_task("files", total=files, note="")
        self._frames = self._progress.add_task("frames", total=None, note="sampled")
        self._progress.start()

    def frames(self, n: int) -> None:
        self._progress.update(self._frames, advance=n)

    def file_done(self, result: FileResult) -> None:
        self._progress.update(self._files, advance=1, note=result.source.source[-40:])
        if result.status == "error":
            log.error("%s", describe(result))
        else:
            log.debug("%s", describe(result))

    def close(self) -> None:
        self._progress.stop()
