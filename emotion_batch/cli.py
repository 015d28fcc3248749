"""The `emotion-batch` command: a thin layer over the API that writes the results, summary and charts.

`emotion-batch PATH... --out results.csv` runs the default `analyze` command; `emotion-batch models fetch|info`
manages the detector and shows the model. Every analyze option can also come from an environment variable
(EMOTION_BATCH_<OPTION>), which suits cron. Exit codes: 0 all files ok, 1 some files failed (they are listed),
2 usage or configuration error (nothing processed), 66 no media file found in the inputs (nothing done),
74 output not writable (e.g. disk full), 75 another run holds this output's lock, 130 interrupted (Ctrl-C or
SIGTERM, at any moment from the start).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import time


class _EarlySignal:
    """Ctrl-C or SIGTERM arriving while the command is still starting (imports, before the run's own handlers).

    The first one is remembered and the run, once it starts, stops at once with the interrupted exit code; a
    second one exits with that code straight away. Installed only when this module runs as the command (not
    when a test or a program imports it), and put back to Python's defaults for the other subcommands."""

    name: str | None = None
    installed = False

    @classmethod
    def handler(cls, signum: int, _frame: object) -> None:
        if cls.name is not None:
            raise SystemExit(130)
        cls.name = signal.Signals(signum).name

    @classmethod
    def install(cls) -> None:
        argv0 = sys.argv[0] if sys.argv else ""
        command = os.path.basename(argv0) == "emotion-batch" or (
            os.path.basename(argv0) == "__main__.py"
            and os.path.basename(os.path.dirname(argv0)) == "emotion_batch"
        )
        if command and not cls.installed:
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, cls.handler)
            except ValueError:  # not the main thread
                return
            cls.installed = True

    @classmethod
    def uninstall(cls) -> None:
        """Python's own behaviour again (another subcommand); a signal that already came is delivered now."""
        if not cls.installed:
            return
        cls.installed = False
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if cls.name is not None:
            signal.raise_signal(signal.Signals[cls.name])


_EarlySignal.install()  # first thing: the imports below take a while
from collections.abc import Iterator  # noqa: E402 (after the early signal handlers)
from pathlib import Path  # noqa: E402 (after the early signal handlers)
from typing import Any  # noqa: E402 (after the early signal handlers)

import click  # noqa: E402 (after the early signal handlers)

from . import __version__  # noqa: E402 (after the early signal handlers)
from .defaults import (  # noqa: E402 (after the early signal handlers)
    DEFAULT_BIN_S,
    DEFAULT_FPS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_FACE,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_WORKERS,
    DEFAULT_WORKING_WIDTH,
    DETECTOR_CHOICES,
)
from .options import option_factory  # noqa: E402 (after the early signal handlers)

log = logging.getLogger("emotion_batch")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
#: An output or the state store could not be written (EX_IOERR); the previous results are intact.
EXIT_OUTPUT = 74
#: Another run holds the lock on this output (EX_TEMPFAIL: try again later).
EXIT_LOCKED = 75
#: Stopped by Ctrl-C or SIGTERM (128 + SIGINT); run the same command again to continue.
EXIT_INTERRUPTED = 130
#: The inputs hold no media file at all (EX_NOINPUT): an empty folder, or a share that is not mounted. Nothing
#: was done; the earlier results are unchanged.
EXIT_NO_INPUT = 66


class DefaultGroup(click.Group):
    """Routes `emotion-batch PATH ...` to the `analyze` command unless the first word is a subcommand."""

    default_command = "analyze"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


_FILE = click.Path(dir_okay=False, path_type=Path)
_FOLDER = click.Path(file_okay=False, path_type=Path)
_COUNT = click.IntRange(min=1)
_SECONDS = click.FloatRange(min=0)
_POSITIVE = click.FloatRange(min=0, min_open=True)

#: The help text of each analyze option, by long name; the options themselves are declared on `analyze`.
_HELP = {
    "out": "Per-frame results: .csv, or .parquet by extension.",
    "summary": "Per-file summary [default: <out stem>_summary.<ext> beside --out].",
    "charts": "Folder for the PNG charts [default: <out stem>_charts/ beside --out].",
    "no-charts": "Do not draw charts (nor the track thumbnails beside them).",
    "bin": "Width in seconds of the bins of <out stem>_timeline.csv (each person's emotion mix per bin).",
    "no-report": "Do not write the HTML report <out stem>_report.html.",
    "subtitles": "Also write one WebVTT subtitle file per video (each person's emotion over time), beside the "
    "charts [or in <out stem>_subtitles/ with --no-charts].",
    "force": "Analyse every file again, even those the state store (<out>.state/) records as done; also the way "
    "to adopt new model or sampling settings for an existing --out.",
    "file-timeout": "Stop a file that takes longer than this many seconds (its worker is killed, the file is "
    "recorded as an error and the run goes on) [default: no limit].",
    "max-pixels": "Refuse images whose header claims more pixels than this, before decoding (decompression bombs).",
    "fps": f"Sample this many frames per second of video, by container timestamp [default: {DEFAULT_FPS:g}].",
    "every": "Sample every Nth frame instead of by time.",
    "start": "Start of the analysed window, in seconds.",
    "end": "End of the analysed window, in seconds.",
    "max-frames": "At most this many sampled frames per video.",
    "detector": "Face detector; auto uses YuNet when its file is found, else Haar where OpenCV has it.",
    "detector-model": "YuNet ONNX file [default: the user cache, filled by `emotion-batch models fetch`].",
    "model": "Emotion model .onnx with its .json card beside it [default: the bundled model].",
    "min-face": "Ignore faces smaller than this many pixels (shorter box side, full resolution).",
    "working-width": "Downscale wider video frames to this width for detection (boxes are reported at full "
    "resolution; photos use at least 640). Larger finds smaller faces and costs more; 640 finds ~3% more of them.",
    "score-threshold": "Minimum detector score for a face.",
    "annotate": "Write copies of images and sampled frames with boxes and labels into this folder.",
    "workers": "Files processed in parallel, one process each.",
    "scheduler": "Analyse on this Dask cluster (e.g. tcp://host:8786; needs the dask extra) instead of local "
    "workers; results, state store and resume work as locally.",
    "include": "Only files matching this glob (relative path or name); repeatable.",
    "exclude": "Skip files matching this glob (relative path or name); repeatable.",
    "quiet": "Only warnings and errors; no progress display.",
    "verbose": "Debug logging.",
    "log-file": "Also append plain log lines here.",
}


_option = option_factory(_HELP)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="emotion-batch")
def main() -> None:
    """Per-frame facial emotion timelines for folders of videos and photos.

    \b
    emotion-batch PATH [PATH ...] --out results.csv [options]   (see: emotion-batch analyze --help)
    emotion-batch models fetch                                   (install the YuNet face detector)
    emotion-batch models info                                    (show model, detector and versions)
    """
    if click.get_current_context().invoked_subcommand != "analyze":
        _EarlySignal.uninstall()


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_option("--out", "-o", required=True, type=_FILE)
@_option("--summary", type=_FILE)
@_option("--charts", type=_FOLDER)
@_option("--no-charts", is_flag=True)
@_option("--bin", "bin_s", type=_POSITIVE, default=DEFAULT_BIN_S)
@_option("--no-report", is_flag=True)
@_option("--subtitles", is_flag=True)
@_option("--force", is_flag=True)
@_option("--file-timeout", type=_POSITIVE)
@_option("--max-pixels", type=_COUNT, default=DEFAULT_MAX_PIXELS)
@_option("--fps", type=_POSITIVE)
@_option("--every", type=_COUNT)
@_option("--start", type=_SECONDS)
@_option("--end", type=_SECONDS)
@_option("--max-frames", type=_COUNT)
@_option("--detector", type=click.Choice(DETECTOR_CHOICES), default="auto")
@_option("--detector-model", type=_FILE)
@_option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_option("--min-face", type=_COUNT, default=DEFAULT_MIN_FACE)
@_option("--working-width", type=click.IntRange(min=32), default=DEFAULT_WORKING_WIDTH)
@_option("--score-threshold", type=click.FloatRange(0, 1), default=DEFAULT_SCORE_THRESHOLD)
@_option("--annotate", type=_FOLDER)
@_option("--workers", "-j", type=_COUNT, default=DEFAULT_WORKERS)
@_option("--scheduler", metavar="ADDRESS")
@_option("--include", multiple=True)
@_option("--exclude", multiple=True)
@_option("--quiet", "-q", is_flag=True)
@_option("--verbose", "-v", is_flag=True)
@_option("--log-file", type=_FILE)
def analyze(
    paths: tuple[Path, ...],
    out: Path,
    summary: Path | None,
    charts: Path | None,
    no_charts: bool,
    bin_s: float,
    no_report: bool,
    subtitles: bool,
    force: bool,
    quiet: bool,
    verbose: bool,
    log_file: Path | None,
    **options: Any,
) -> None:
    """Analyse videos and photos (files or folders, walked recursively) and write the results.

    Writes one row per face per sampled frame to --out, a per-file summary, and charts (a timeline per video
    and an overview across files). Runs are incremental: a state store beside --out (<out>.state/) remembers
    finished files, so a rerun analyses only new, changed or previously failed files.

    \b
    Exit codes:
      0   all files ok
      1   some files failed (listed; retried on the next run)
      2   usage or configuration error, or settings that differ from
          those of the rows already in --out (see --force)
      66  no media file found in the inputs (empty folder, share not
          mounted?); nothing done, previous results kept
      74  an output could not be written (e.g. disk full); previous
          results kept
      75  another run holds the lock on this output
      130 interrupted; run the same command again to continue
    """
    from .batch.prestart import start_worker_server

    if not options.get("scheduler"):
        # First, so the worker fork server's imports run on the other core while this process imports its own.
        start_worker_server(options["max_pixels"], options["workers"])

    from rich.console import Console

    from .batch.incremental import OutputPaths
    from .batch.interrupts import stop_on_signals
    from .batch.job import Options, prepare
    from .batch.run import Interrupted, run_incremental
    from .output import logs
    from .output.progress import LogProgress, NoProgress, RichProgress

    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose are mutually exclusive")
    if options["fps"] is not None and options["every"] is not None:
        raise click.UsageError("--fps and --every are mutually exclusive")
    interactive = sys.stderr.isatty() and not quiet
    console = Console(stderr=True) if interactive else None
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    try:
        logs.configure(level, interactive, console, log_file)
    except OSError as exc:
        raise click.UsageError(f"cannot open log file {log_file}: {exc.strerror or exc}") from exc

    options["include"], options["exclude"] = tuple(options["include"]), tuple(options["exclude"])
    outputs = OutputPaths.for_out(
        out, summary, charts, no_charts, report=not no_report, subtitles=subtitles, bin_s=bin_s
    )
    progress = RichProgress(console) if interactive else NoProgress() if quiet else LogProgress()
    started = time.perf_counter()

    def announce(name: str) -> None:
        log.warning(
            "%s received: finishing the file(s) being analysed, then stopping; send it again to stop at once",
            name,
        )

    from .vision.detection import download_if_missing  # no detector installed: the first run downloads it

    with _exit_codes(), stop_on_signals(announce) as stop, download_if_missing(interactive):
        if _EarlySignal.name is not None:
            raise Interrupted(
                f"interrupted by {_EarlySignal.name} while starting: nothing was done and {out} was left unchanged"
            )
        outcome = run_incremental(
            lambda o: prepare(list(paths), Options(**options, isolate=True), ignore=o.ignored()),
            outputs,
            force=force,
            progress=progress,
            should_stop=stop,
            quiet=not verbose,
            on_job=functools.partial(_describe_job, paths),
        )
    _report(outcome, out, time.perf_counter() - started, console)


def _exit_codes() -> Any:
    """Turns what stopped a run into its exit code and message: the command's one exception table."""
    from .batch.incremental import SettingsChanged
    from .batch.job import ConfigError, NoInputFiles
    from .batch.locking import LockHeld
    from .batch.run import Interrupted
    from .batch.state import StateError
    from .output.sinks import OutputError

    table: dict[type[Exception], tuple[int, int, str]] = {
        ConfigError: (EXIT_USAGE, 0, ""),  # printed as one "Error: ..." line, no usage text
        SettingsChanged: (EXIT_USAGE, logging.ERROR, "{error}"),
        LockHeld: (EXIT_LOCKED, logging.ERROR, "{error}. Exiting without doing anything (exit code {code})."),
        Interrupted: (EXIT_INTERRUPTED, logging.WARNING, "{error}"),
        NoInputFiles: (EXIT_NO_INPUT, logging.WARNING, "{error} (exit code {code})"),
        OutputError: (
            EXIT_OUTPUT,
            logging.ERROR,
            "{error}. Finished files are saved in the state folder; free the space or fix the problem and run "
            "the same command again (exit code {code}).",
        ),
    }
    table[StateError] = table[OutputError]

    @contextlib.contextmanager
    def translate() -> Iterator[None]:
        try:
            yield
        except KeyboardInterrupt:  # a second signal before the run could turn it into Interrupted
            log.warning(
                "stopped at once; run the same command again to continue (exit code %d)", EXIT_INTERRUPTED
            )
            sys.exit(EXIT_INTERRUPTED)
        except tuple(table) as exc:
            code, level, message = next(v for k, v in table.items() if isinstance(exc, k))
            if not level:
                click.echo(f"Error: {exc}", err=True)
                sys.exit(code)
            log.log(level, "%s", message.format(error=exc, code=code))
            sys.exit(code)

    return translate()


def _describe_job(paths: tuple[Path, ...], job: Any) -> None:
    settings = job.settings
    log.info(
        "detector %s; model %s (sha256 %s)",
        settings.detector.name,
        settings.model.name,
        settings.model.sha256[:12],
    )
    from .batch.job import NoInputFiles

    if not any(s.media_type is not None for s in job.sources):
        found = f"{len(job.sources)} file(s), none of them a photo or video" if job.sources else "no files"
        raise NoInputFiles(
            f"no media files found under {', '.join(map(str, paths))} ({found}): an empty folder, or a share that "
            "is not mounted? Nothing was done and the earlier results, if any, are unchanged"
        )
    if not settings.model.crop_from_card:
        log.warning("the model card has no measured crop framing; using the default %s", settings.model.crop)


def _report(outcome: Any, out: Path, elapsed: float, console: Any) -> None:
    """The final summary (a table on a terminal, a log line) and the exit code for failed files."""
    table = outcome.table
    failed = table[table["status"] == "error"]
    if console is not None:
        _print_table(console, table, outcome.rows, elapsed)
    counts = table["status"].value_counts()
    log.info(
        "done in %.1f s: %d file(s) (%d ok, %d error, %d skipped; %d analysed now, %d kept from earlier runs), "
        "%d row(s), %d face(s); results in %s%s",
        elapsed,
        len(table),
        counts.get("ok", 0),
        counts.get("error", 0),
        counts.get("skipped", 0),
        outcome.processed,
        outcome.kept,
        outcome.rows,
        int(table["faces"].fillna(0).sum()),
        out,
        "" if outcome.rewritten else " (already up to date)",
    )
    if len(failed):
        log.error(
            "%d file(s) failed:\n%s",
            len(failed),
            "\n".join(f"  {s}: {e}" for s, e in zip(failed["source"], failed["error"])),
        )
        sys.exit(EXIT_FAILURES)


def _print_table(console: Any, table: Any, rows: int, elapsed: float) -> None:
    import pandas as pd
    from rich.table import Table
    from rich.text import Text

    view = Table(title=f"emotion-batch: {len(table)} file(s), {rows} row(s) in {elapsed:.1f} s")
    for name in ("source", "status", "frames", "faces", "tracks", "dominant", "note"):
        view.add_column(name, justify="right" if name in ("frames", "faces", "tracks") else "left")
    style = {"ok": "green", "error": "bold red", "skipped": "yellow"}

    def text(v: Any) -> str:
        return "" if pd.isna(v) else str(v)

    for r in table.itertuples():  # Text cells: file names may contain [brackets] that are not markup
        view.add_row(
            Text(r.source),
            Text(r.status, style=style.get(r.status, "")),
            text(r.frames_sampled),
            text(r.faces),
            text(r.tracks),
            text(r.dominant_emotion),
            Text(text(r.error)),
        )
    console.print(view)


@main.group()
def models() -> None:
    """Install the face detector and inspect the emotion model."""


@models.command("fetch")
@click.option(
    "--from",
    "from_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Install from a local copy of the file instead of downloading (offline machines).",
)
@click.option("--url", default=None, help="Download from this URL (a mirror) instead of the official one.")
@click.option("--force", is_flag=True, help="Reinstall even when a verified copy is already there.")
def models_fetch(from_file: Path | None, url: str | None, force: bool) -> None:
    """Download YuNet (opencv_zoo) into the user cache and verify its pinned sha256.

    The main command downloads it the same way on its first run when none is installed; this command does it
    up front, or installs a copy fetched elsewhere (--from).
    """
    from .vision.fetch import YUNET_SHA256, FetchError, detector_url, fetch_yunet

    source = str(from_file) if from_file else (url or detector_url())
    click.echo(f"installing YuNet from {source}")
    try:
        path = fetch_yunet(url=url or detector_url(), from_file=from_file, force=force)
    except FetchError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_FAILURES)
    click.echo(f"installed {path} (sha256 {YUNET_SHA256} verified)")


@models.command("info")
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Show this model instead of the bundled one.",
)
@click.option(
    "--detector-model", type=click.Path(dir_okay=False, path_type=Path), help="YuNet file to check."
)
def models_info(model: Path | None, detector_model: Path | None) -> None:
    """Show the emotion model and its card, the face detector in use, and library versions."""
    import json

    import cv2
    import onnxruntime

    from .vision.classification import ModelUnavailable, card_path_for, load_model_card
    from .vision.detection import DetectorUnavailable, haar_available, resolve_detector
    from .vision.fetch import cached_yunet_path

    click.echo(
        f"emotion-batch {__version__}; OpenCV {cv2.__version__}; onnxruntime {onnxruntime.__version__}"
    )
    try:
        card = load_model_card(model)
        raw = json.loads(card_path_for(card.path).read_text(encoding="utf-8"))
        click.echo(f"model: {card.path}\n  sha256: {card.sha256}\n  labels: {', '.join(card.labels)}")
        backbone = raw.get("backbone")
        backbone = backbone.get("name", "?") if isinstance(backbone, dict) else backbone or "?"
        click.echo(f"  input: {card.height}x{card.width} grey; backbone: {backbone}")
        framing = "measured, from the card" if card.crop_from_card else "default: the card has no crop"
        click.echo(
            f"  crop: scale {card.crop.scale:.3f}, offset ({card.crop.offset_x:+.3f}, "
            f"{card.crop.offset_y:+.3f}) ({framing})"
        )
        for split, m in (raw.get("metrics") or {}).items():
            if isinstance(m, dict) and "accuracy" in m:
                click.echo(
                    f"  {split}: accuracy {m['accuracy']:.4f}, macro-F1 {m.get('macro_f1', float('nan')):.4f}"
                )
        for split, g in (raw.get("generalisation") or {}).items():  # scripts/evaluate_model.py's figures
            if isinstance(g, dict):
                click.echo(f"  {split} benchmark: {_benchmark_line(g)}")
    except ModelUnavailable as exc:
        click.echo(f"model: unavailable: {exc}")
    try:
        spec = resolve_detector("auto", detector_model)
        click.echo(f"detector: {spec.kind} {spec.path}\n  sha256: {spec.sha256}")
    except DetectorUnavailable as exc:
        click.echo(f"detector: unavailable: {exc}")
    click.echo(f"  YuNet cache location: {cached_yunet_path()}")
    click.echo(f"  Haar cascades: {'available' if haar_available() else 'not in this OpenCV'}")


def _benchmark_line(figures: dict[str, Any]) -> str:
    """One line of a card's `generalisation` entry: both labelings, the robustness mean, speed and CPU."""

    def share(value: Any) -> str:
        return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "?"

    parts = [
        f"FER-2013 labels {share(figures.get('accuracy'))}",
        f"FER+ majority {share((figures.get('ferplus') or {}).get('majority_accuracy'))}",
        f"robustness mean {share((figures.get('robustness') or {}).get('mean_accuracy'))}",
    ]
    ms = figures.get("ms_per_face_batch1_1thread_median")
    if isinstance(ms, (int, float)):
        parts.append(f"{ms:.2f} ms/face on {figures.get('cpu', 'an unnamed CPU')}")
    return ", ".join(parts)


# `emotion-batch live SOURCE`: the same rows from a camera or stream (emotion_batch/live/).
from .live.command import live_command  # noqa: E402  (after `main`, which it is added to)

main.add_command(live_command)
