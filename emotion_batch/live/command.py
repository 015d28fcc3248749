"""`emotion-batch live SOURCE --out live.csv`: real-time emotion rows from a camera or a stream.

Wires the pieces together: a decoding thread (`capture.Decoder` over `sources.frames`), the analysis loop
(`capture.run`) writing to a `sink.CsvSink`, and the views (`view`, `preview`) fed from the same samples.
Exit codes: 0 stopped as asked (SIGINT/SIGTERM, --duration, --until, end of stdin); 1 the source was lost for
longer than --give-up-after; 2 usage or configuration error; 74 the output could not be written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from .. import defaults
from ..options import option_factory

log = logging.getLogger("emotion_batch.live")

EXIT_OK, EXIT_SOURCE_LOST, EXIT_OUTPUT = 0, 1, 74
DEFAULT_LIVE_FPS = 5.0

_HELP = {
    "out": "Append the rows here (CSV, batch mode's columns), flushed as they are made.",
    "fps": "Samples per second to analyse; fewer when the machine falls behind (counted in the summary).",
    "duration": "Stop after this many seconds.",
    "until": "Stop at this local time: HH:MM[:SS] (the next one) or YYYY-MM-DDTHH:MM[:SS].",
    "rotate": "Start a new output file each hour or day: <out stem>_<period><suffix>.",
    "preview": "Serve a preview page (annotated frames and the table) on this loopback HOST:PORT.",
    "input-format": "Demuxer for the source (e.g. mpegts or mjpeg for stdin) [default: probed].",
    "reconnect-max": "Longest wait between reconnection attempts, in seconds (the wait doubles from 0.5 s).",
    "give-up-after": "Exit with code 1 after this many seconds without a frame [default: keep trying].",
    "stats": "Write the summary (counts, latency percentiles) as JSON here at the end.",
    "no-view": "No live table in the terminal.",
    "detector": "Face detector; auto uses YuNet when its file is found, else Haar where OpenCV has it.",
    "detector-model": "YuNet ONNX file [default: the user cache, filled by `emotion-batch models fetch`].",
    "model": "Emotion model .onnx with its .json card beside it [default: the bundled model].",
    "min-face": "Ignore faces smaller than this many pixels (shorter box side, full resolution).",
    "working-width": "Downscale wider frames to this width for detection.",
    "score-threshold": "Minimum detector score for a face.",
    "quiet": "Only warnings and errors; no live table.",
    "verbose": "Debug logging.",
}


_option = option_factory(_HELP)


class LocalTime(click.ParamType):
    """HH:MM[:SS] (the next such time) or an ISO date and time, as a POSIX timestamp."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        text = str(value).strip()
        now = dt.datetime.now()
        try:
            if len(text) <= 8 and ":" in text:
                clock = dt.time.fromisoformat(text)
                when = dt.datetime.combine(now.date(), clock)
                if when <= now:
                    when += dt.timedelta(days=1)
            else:
                when = dt.datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is not HH:MM[:SS] or YYYY-MM-DDTHH:MM[:SS]", param, ctx)
        return when.timestamp()


_POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command("live", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@_option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path))
@_option("--fps", type=_POSITIVE, default=DEFAULT_LIVE_FPS)
@_option("--duration", type=_POSITIVE)
@_option("--until", type=LocalTime())
@_option("--rotate", type=click.Choice(["hourly", "daily"]))
@_option("--preview", metavar="HOST:PORT")
@_option("--input-format", metavar="FORMAT")
@_option("--reconnect-max", type=_POSITIVE, default=10.0)
@_option("--give-up-after", type=_POSITIVE)
@_option("--stats", type=click.Path(dir_okay=False, path_type=Path))
@_option("--no-view", is_flag=True)
@_option("--detector", type=click.Choice(defaults.DETECTOR_CHOICES), default="auto")
@_option("--detector-model", type=click.Path(dir_okay=False, path_type=Path))
@_option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_option("--min-face", type=click.IntRange(min=1), default=defaults.DEFAULT_MIN_FACE)
@_option("--working-width", type=click.IntRange(min=32), default=defaults.DEFAULT_WORKING_WIDTH)
@_option("--score-threshold", type=click.FloatRange(0, 1), default=defaults.DEFAULT_SCORE_THRESHOLD)
@_option("--quiet", "-q", is_flag=True)
@_option("--verbose", "-v", is_flag=True)
def live_command(source: str, out: Path, **options: Any) -> None:
    """Analyse a camera or stream in real time, appending rows to --out as they are made.

    \b
    SOURCE is a V4L2 camera (/dev/video0), a stream URL (rtsp://, http://,
    tcp://, udp://, ...) or - for an MPEG-TS or MJPEG stream on stdin.
    Stop with Ctrl-C or SIGTERM (the CSV is complete; exit code 0), or
    with --duration / --until. Dropped streams are reconnected.

    \b
    Exit codes:
      0   stopped as asked, or stdin ended
      1   the source was lost for longer than --give-up-after
      2   usage or configuration error
      74  the output could not be written
    """
    from .preview import Preview, PreviewError
    from .sources import SourceError, parse_source

    if options["quiet"] and options["verbose"]:
        raise click.UsageError("--quiet and --verbose are mutually exclusive")
    try:
        spec = parse_source(source, options["input_format"])
    except SourceError as exc:
        raise click.BadParameter(str(exc), param_hint="SOURCE") from exc
    preview = None
    if options["preview"]:
        try:
            from .preview import parse_address

            parse_address(options["preview"])
        except PreviewError as exc:
            raise click.BadParameter(str(exc), param_hint="--preview") from exc

    from .view import People

    people = People()
    if options["preview"]:
        preview = Preview(options["preview"], people, spec.name)
    sys.exit(_session(spec, out, people, preview, options))


def _settings(options: dict[str, Any]) -> tuple[Any, Any]:
    from ..vision.classification import ModelUnavailable, load_model_card
    from ..vision.detection import DetectorUnavailable, resolve_detector

    try:
        detector = resolve_detector(
            options["detector"],
            options["detector_model"],
            score_threshold=options["score_threshold"],
            min_face=options["min_face"],
            working_width=options["working_width"],
        )
        model = load_model_card(options["model"])
    except (DetectorUnavailable, ModelUnavailable) as exc:
        raise click.UsageError(str(exc)) from exc
    return detector, model


def _session(spec: Any, out: Path, people: Any, preview: Any, options: dict[str, Any]) -> int:
    from rich.console import Console
    from rich.live import Live

    from . import capture
    from .preview import PreviewError
    from .sink import CsvSink, SinkError

    interactive = sys.stderr.isatty() and not options["quiet"] and not options["no_view"]
    console = Console(stderr=True)
    level = logging.WARNING if options["quiet"] else logging.DEBUG if options["verbose"] else logging.INFO
    if interactive:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("emotion_batch")
    root.addHandler(handler)
    root.setLevel(level)

    detector, model = _settings(options)
    analyser = capture.Analyser(detector, model, spec.name)
    sink = CsvSink(out, options["rotate"])
    try:
        sink.open_now()
    except SinkError as exc:
        log.error("%s", exc)
        return EXIT_OUTPUT

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.warning("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    deadline = started + options["duration"] if options["duration"] else None
    if options["until"] is not None:
        until = started + max(0.0, options["until"] - time.time())
        deadline = until if deadline is None else min(deadline, until)

    buffer = capture.LatestFrame()
    decoder = capture.Decoder(
        spec,
        buffer,
        stop,
        max_backoff_s=options["reconnect_max"],
        give_up_s=options["give_up_after"],
    )
    observers: list[Any] = [lambda sample: people.update(sample.rows)]
    code = EXIT_OK
    live_view = None
    try:
        if preview is not None:
            try:
                log.info("preview on %s", preview.start())
            except PreviewError as exc:
                raise click.UsageError(str(exc)) from exc
            observers.append(preview)
        if interactive:
            from .view import terminal_table

            live_view = Live(terminal_table(people, spec.name), console=console, refresh_per_second=4)
            live_view.start()
            observers.append(
                lambda s: live_view.update(terminal_table(people, f"{spec.name}: {people.samples} samples"))
            )
        log.info("live: %s -> %s at %g samples/s", spec.name, sink.path_for(time.time()), options["fps"])
        decoder.start()
        stats = capture.run(
            decoder,
            analyser,
            sink.write,
            observers,
            stop,
            fps=options["fps"],
            deadline=deadline,
            started=started,
        )
    except SinkError as exc:
        log.error("%s", exc)
        return EXIT_OUTPUT
    finally:
        stop.set()
        if live_view is not None:
            live_view.stop()
        sink.close()
        if preview is not None:
            preview.close()
        decoder.join(timeout=2.0)  # a daemon thread: a read stuck in FFmpeg cannot hold the exit
        for s, handler_before in previous.items():
            signal.signal(s, handler_before)
    if decoder.error is not None:
        log.error("%s", decoder.error)
        code = EXIT_SOURCE_LOST
    summary = _summary(stats, decoder.stats, time.monotonic() - started, sink)
    log.info(
        "live done in %.1f s: %d sample(s), %d row(s), %d face(s); %d frame(s) decoded, %d sample(s) skipped "
        "(analysis behind); latency median %s, p95 %s, max %.3f s; %d connection(s), %d drop(s); rows in %s",
        summary["elapsed_s"],
        stats.samples,
        stats.rows,
        stats.faces,
        decoder.stats.frames,
        stats.skipped,
        _seconds(summary["latency_median_s"]),
        _seconds(summary["latency_p95_s"]),
        stats.max_latency_s,
        decoder.stats.connections,
        decoder.stats.drops,
        ", ".join(summary["outputs"]),
    )
    if options["stats"]:
        options["stats"].write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return code


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _summary(stats: Any, source: Any, elapsed: float, sink: Any) -> dict[str, Any]:
    return {
        "elapsed_s": elapsed,
        "samples": stats.samples,
        "rows": stats.rows,
        "faces": stats.faces,
        "samples_skipped": stats.skipped,
        "frames_decoded": source.frames,
        "connections": source.connections,
        "drops": source.drops,
        "latency_median_s": stats.percentile(50),
        "latency_p95_s": stats.percentile(95),
        "latency_max_s": stats.max_latency_s,
        "outputs": [str(p) for p in sink.paths],
    }
