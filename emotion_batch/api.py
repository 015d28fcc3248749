"""The Python API: `emotion_batch.analyze(paths, ...)` returns the per-frame table as a pandas DataFrame.

The CLI is a thin layer over `prepare` and the same per-file tasks (plus the state store, see `incremental`),
so a notebook and a cron job produce the same rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .analysis import FileResult, Settings, engine_for
from .batch.executors import ExecutorPlan, dispatch, local_executor
from .batch.prestart import start_worker_server
from .defaults import DEFAULT_MAX_PIXELS, DEFAULT_MIN_FACE, DEFAULT_SCORE_THRESHOLD, DEFAULT_WORKING_WIDTH
from .media.sampling import SamplingPlan
from .media.sources import Source, discover
from .output.progress import NoProgress, Progress, TqdmProgress
from .schema import rows_frame, summary_frame
from .vision.classification import ModelUnavailable, load_model_card
from .vision.detection import DetectorUnavailable, resolve_detector
from .vision.fetch import YUNET_SHA256, cached_yunet_path

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
    #: Seconds one file may take before its worker is stopped and the file recorded as an error.
    file_timeout: float | None = None
    #: Images whose header claims more pixels are refused before decoding.
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Analyse in separate worker processes, so a decoder crash or hang cannot take the caller down. Default
    #: (None): only when `workers` > 1 or `file_timeout` is set; the CLI always isolates.
    isolate: bool | None = None
    #: A Dask scheduler address ("tcp://host:8786"): analyse on that cluster instead of local workers.
    scheduler: str | None = None


@dataclass(frozen=True)
class Job:
    """A prepared run: the files to process and the resolved settings shared by every worker."""

    sources: list[Source]
    settings: Settings
    workers: int
    file_timeout: float | None = None
    isolate: bool = False
    scheduler: str | None = None


def prepare(paths: Sequence[PathLike], options: Options, ignore: Iterable[PathLike] = ()) -> Job:
    """Resolve detector, model and inputs, and load the engine once here so configuration errors surface now.

    `ignore` lists output paths (results, charts, annotations) never to be read as inputs.
    """
    if not paths:
        raise ConfigError("no input paths given")
    if options.workers < 1:
        raise ConfigError(f"workers must be at least 1, got {options.workers}")
    if options.file_timeout is not None and not options.file_timeout > 0:
        raise ConfigError(f"file_timeout must be a positive number of seconds, got {options.file_timeout}")
    if options.max_pixels < 1:
        raise ConfigError(f"max_pixels must be at least 1, got {options.max_pixels}")
    try:
        sampling = SamplingPlan(options.fps, options.every, options.start, options.end, options.max_frames)
        detector = resolve_detector(
            options.detector,
            options.detector_model,
            score_threshold=options.score_threshold,
            min_face=options.min_face,
            working_width=options.working_width,
        )
        _check_pinned_detector(detector.kind, detector.path, detector.sha256)
        model = load_model_card(options.model)
        annotate_dir = Path(options.annotate) if options.annotate is not None else None
        settings = Settings(
            sampling=sampling,
            detector=detector,
            model=model,
            annotate_dir=annotate_dir,
            max_pixels=options.max_pixels,
        )
        isolate = options.isolate
        if isolate is None:
            isolate = options.workers > 1 or options.file_timeout is not None
        if isolate and not options.scheduler:
            start_worker_server(options.max_pixels, options.workers)
        engine_for(settings)
        ignored = [*ignore, *([annotate_dir] if annotate_dir else [])]
        sources = discover(paths, include=options.include, exclude=options.exclude, ignore=ignored)
    except (ValueError, DetectorUnavailable, ModelUnavailable, FileNotFoundError) as exc:
        raise ConfigError(str(exc)) from exc
    return Job(sources, settings, options.workers, options.file_timeout, isolate, options.scheduler or None)


def make_executor(
    job: Job, on_frame: Callable[[int], None] | None = None, quiet: bool = True
) -> ExecutorPlan:
    """Where the job's files are analysed: a Dask cluster, isolated local workers, or this process.

    Raises ConfigError when the cluster cannot be used.
    """
    if job.scheduler:
        from .batch.cluster import ClusterUnavailable, dask_executor

        try:
            return dask_executor(job.scheduler, job.settings)
        except ClusterUnavailable as exc:
            raise ConfigError(str(exc)) from exc
    return local_executor(
        job.settings,
        job.workers,
        isolate=job.isolate,
        file_timeout=job.file_timeout,
        on_frame=on_frame,
        quiet=quiet,
    )


def _check_pinned_detector(kind: str, path: Path, sha256: str) -> None:
    """The cached YuNet was verified when `models fetch` installed it; verify again before every use."""
    if kind == "yunet" and path.resolve() == cached_yunet_path().resolve() and sha256 != YUNET_SHA256:
        raise DetectorUnavailable(
            f"the cached YuNet file {path} does not match its pinned sha256 (expected {YUNET_SHA256[:12]}..., "
            f"got {sha256[:12]}...); it was not loaded. Run `emotion-batch models fetch --force` to reinstall it"
        )


def iter_results(
    job: Job, progress: Progress | None = None, should_stop: Callable[[], bool] = lambda: False
) -> Iterator[FileResult]:
    """Run a prepared job, yielding each file's result as it completes (not necessarily in source order)."""
    progress = progress or NoProgress()
    progress.start(len(job.sources))
    plan = make_executor(job, on_frame=progress.frames)
    streamed = plan.frame_hook is not None
    try:
        for result in dispatch(
            plan, job.sources, job.settings, on_frames=progress.frames, should_stop=should_stop
        ):
            if not streamed:
                progress.frames(int(result.summary.get("frames_sampled") or 0))
            progress.file_done(result)
            yield result
        plan.finish()
    finally:
        plan.abort()  # a no-op after finish(); stops the workers if the caller stopped early
        progress.close()


def analyze(
    paths: PathLike | Sequence[PathLike],
    *,
    progress: bool = True,
    **options: object,
) -> pd.DataFrame:
    """Analyse files and folders; return one row per face per sampled frame (see `schema.ROW_COLUMNS`).

    Keyword options are the fields of `Options` (fps, every, start, end, max_frames, detector, detector_model,
    model, min_face, score_threshold, annotate, workers, include, exclude, file_timeout, max_pixels, isolate,
    scheduler). The per-file summary is attached
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
    order = {s.source: i for i, s in enumerate(job.sources)}
    results = sorted(
        iter_results(job, TqdmProgress() if progress else None), key=lambda r: order[r.source.source]
    )
    frames = [r.rows for r in results if len(r.rows)]
    rows = pd.concat(frames, ignore_index=True) if frames else rows_frame([])
    rows.attrs["summary"] = summary_frame(r.summary for r in results)
    return rows
