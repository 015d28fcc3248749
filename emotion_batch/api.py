"""The Python API: `emotion_batch.analyze(paths, ...)` returns the per-frame table as a pandas DataFrame.

The CLI is a thin layer over `prepare` + `iter_results`: both resolve settings the same way and run the same
per-file tasks, so a notebook and a cron job produce the same rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .classification import ModelUnavailable, load_model_card
from .defaults import DEFAULT_MIN_FACE, DEFAULT_SCORE_THRESHOLD, DEFAULT_WORKING_WIDTH
from .detection import DetectorUnavailable, resolve_detector
from .progress import NoProgress, Progress, TqdmProgress
from .runner import FileResult, Settings, engine_for, run_files
from .sampling import SamplingPlan
from .schema import rows_frame, summary_frame
from .sources import Source, discover

PathLike = str | os.PathLike[str]


class ConfigError(Exception):
    """The run cannot start (bad option, missing model or detector, missing input); nothing was processed."""


@dataclass(frozen=True)
class Options:
    """User-facing settings of a run; the CLI flags map one to one onto these fields."""

    fps: float | None = None
    every: int | None = None
    start: float | None = None
    end: float | None = None
    max_frames: int | None = None
    detector: str = "auto"
    detector_model: PathLike | None = None
    model: PathLike | None = None
    min_face: int = DEFAULT_MIN_FACE
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    working_width: int = DEFAULT_WORKING_WIDTH
    annotate: PathLike | None = None
    workers: int = 1
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """A prepared run: the files to process and the resolved settings shared by every worker."""

    sources: list[Source]
    settings: Settings
    workers: int


def prepare(paths: Sequence[PathLike], options: Options, ignore: Iterable[PathLike] = ()) -> Job:
    """Resolve detector, model and inputs, and load the engine once here so configuration errors surface now.

    `ignore` lists output paths (results, charts, annotations) never to be read as inputs.
    """
    if not paths:
        raise ConfigError("no input paths given")
    if options.workers < 1:
        raise ConfigError(f"workers must be at least 1, got {options.workers}")
    try:
        sampling = SamplingPlan(options.fps, options.every, options.start, options.end, options.max_frames)
        detector = resolve_detector(
            options.detector,
            options.detector_model,
            score_threshold=options.score_threshold,
            min_face=options.min_face,
            working_width=options.working_width,
        )
        model = load_model_card(options.model)
        annotate_dir = Path(options.annotate) if options.annotate is not None else None
        settings = Settings(sampling=sampling, detector=detector, model=model, annotate_dir=annotate_dir)
        engine_for(settings)
        ignored = [*ignore, *([annotate_dir] if annotate_dir else [])]
        sources = discover(paths, include=options.include, exclude=options.exclude, ignore=ignored)
    except (ValueError, DetectorUnavailable, ModelUnavailable, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from exc
    return Job(sources=sources, settings=settings, workers=options.workers)


def iter_results(job: Job, progress: Progress | None = None) -> Iterator[FileResult]:
    """Run a prepared job, yielding each file's result in source order."""
    progress = progress or NoProgress()
    progress.start(len(job.sources))
    try:
        for result in run_files(job.sources, job.settings, job.workers, on_frame=progress.frames):
            progress.file_done(result)
            yield result
    finally:
        progress.close()


def analyze(
    paths: PathLike | Sequence[PathLike],
    *,
    progress: bool = True,
    **options: object,
) -> pd.DataFrame:
    """Analyse files and folders; return one row per face per sampled frame (see `schema.ROW_COLUMNS`).

    Keyword options are the fields of `Options` (fps, every, start, end, max_frames, detector, detector_model,
    model, min_face, score_threshold, annotate, workers, include, exclude). The per-file summary is attached
    as `df.attrs["summary"]`. Raises `ConfigError` when the run cannot start; problems with single files are
    recorded in the summary instead.
    """
    path_list = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    for key in ("include", "exclude"):
        if isinstance(options.get(key), str):
            options[key] = (options[key],)
        elif options.get(key) is not None:
            options[key] = tuple(options[key])  # type: ignore[arg-type]
    try:
        opts = Options(**options)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
    job = prepare(path_list, opts)
    results = list(iter_results(job, TqdmProgress() if progress else None))
    frames = [r.rows for r in results if len(r.rows)]
    rows = pd.concat(frames, ignore_index=True) if frames else rows_frame([])
    rows.attrs["summary"] = summary_frame(r.summary for r in results)
    return rows
