"""A prepared run: options resolved into a detector, a model, sampling settings and the input files.

`prepare` does everything that can fail for the run as a whole (options, detector, model, inputs) up front, so
a configuration problem is one `ConfigError` before any file is touched; `make_executor` says where the files
will be analysed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..analysis import Settings, engine_for
from ..defaults import DEFAULT_MAX_PIXELS, DEFAULT_MIN_FACE, DEFAULT_SCORE_THRESHOLD, DEFAULT_WORKING_WIDTH
from ..media.sampling import SamplingPlan
from ..media.sources import Source, discover
from ..vision.classification import ModelUnavailable, load_model_card
from ..vision.detection import DetectorUnavailable, resolve_detector
from ..vision.fetch import YUNET_SHA256, cached_yunet_path
from .executors import ExecutorPlan, local_executor
from .prestart import start_worker_server

PathLike = str | os.PathLike[str]


class ConfigError(Exception):
    """The run cannot start (bad option, missing model or detector, missing input); nothing was processed."""


class NoInputFiles(Exception):
    """The inputs hold no media file at all (an empty or unmounted folder?); nothing was done, nothing changed."""


@dataclass(frozen=True)
class Options:
    """User-facing settings of a run; the CLI flags map one to one onto these fields."""

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
    #: Sampling, checked by `media.sampling.SamplingPlan`.
    fps: float | None = None
    every: int | None = None
    start: float | None = None
    end: float | None = None
    max_frames: int | None = None
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
    #: The input paths as given, absolute: files outside all of them are not this run's inputs.
    roots: tuple[Path, ...] = ()

    def covers(self, path: str | os.PathLike[str]) -> bool:
        """Whether `path` (absolute) is one of the input roots or lies under one of them."""
        text = os.fspath(path)
        for root in map(str, self.roots):
            if text == root or text.startswith(root.rstrip(os.sep) + os.sep):
                return True
        return False


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
    roots = tuple(Path(os.path.abspath(p)) for p in paths)
    return Job(
        sources, settings, options.workers, options.file_timeout, isolate, options.scheduler or None, roots
    )


def make_executor(
    job: Job, on_frame: Callable[[int], None] | None = None, quiet: bool = True
) -> ExecutorPlan:
    """Where the job's files are analysed: a Dask cluster, isolated local workers, or this process.

    Raises ConfigError when the cluster cannot be used.
    """
    if job.scheduler:
        from .cluster import ClusterUnavailable, dask_executor

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
