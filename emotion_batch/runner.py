"""Per-file processing and the executors that run it, in order, whatever the number of workers.

`process_file(source, settings)` is the unit of work: a pure, picklable top-level function whose result (that
file's rows and summary record) is complete or replaced by an error record. Anything that can run it - the
in-process loop, a process pool, later a Dask executor - can be plugged into `run_files`, which yields results
in source order so outputs are identical for any worker count.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from . import annotate
from .classification import Classifier, ModelCard
from .detection import Detection, Detector, DetectorSpec, create_detector
from .reports import file_stats
from .sampling import FrameSampler, MediaError, SamplingPlan
from .schema import EMOTIONS, rows_frame
from .sources import Source
from .tracking import FaceTracker

log = logging.getLogger(__name__)

FrameCallback = Callable[[int], None]


@dataclass(frozen=True)
class Settings:
    """Everything that decides a file's rows; resolved once per run and shipped to workers."""

    sampling: SamplingPlan
    detector: DetectorSpec
    model: ModelCard
    annotate_dir: Path | None = None


@dataclass
class FileResult:
    """One file's complete output: its rows (possibly none) and its summary record."""

    source: Source
    rows: pd.DataFrame
    summary: dict[str, object] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.summary["status"])

    @property
    def error(self) -> str | None:
        return self.summary.get("error")  # type: ignore[return-value]


@dataclass
class Engine:
    """The per-process detector and classifier, built once and reused for every file."""

    detector: Detector
    classifier: Classifier


_engine: tuple[tuple[DetectorSpec, ModelCard], Engine] | None = None


def engine_for(settings: Settings) -> Engine:
    """This process's engine for the settings, created on first use (one ONNX session per process)."""
    global _engine
    key = (settings.detector, settings.model)
    if _engine is None or _engine[0] != key:
        cv2.setNumThreads(1)  # parallelism comes from worker processes, not threads fighting over cores
        _engine = (key, Engine(create_detector(settings.detector), Classifier(settings.model)))
    return _engine[1]


def init_worker(settings: Settings) -> None:
    """Process-pool initializer: load the model and detector before the first file arrives."""
    engine_for(settings)


def _summary(source: Source, settings: Settings, status: str, error: str | None, **stats: object) -> dict:
    return {
        "source": source.source,
        "path": str(source.path),
        "media_type": source.media_type,
        "status": status,
        "error": error,
        "detector": settings.detector.name,
        "detector_sha256": settings.detector.sha256,
        "model": settings.model.name,
        "model_sha256": settings.model.sha256,
        **stats,
    }


def skipped_result(source: Source, settings: Settings) -> FileResult:
    """The record of a file that is not analysed (e.g. not a media extension)."""
    return FileResult(source, rows_frame([]), _summary(source, settings, "skipped", source.skip_reason))


def _box(face: Detection, width: int, height: int) -> tuple[int, int, int, int]:
    """The face box clipped to the frame, in integer pixels, as written to the CSV."""
    x0, y0 = max(0, round(face.x)), max(0, round(face.y))
    x1, y1 = min(width, round(face.x + face.w)), min(height, round(face.y + face.h))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def _analyse(source: Source, settings: Settings, on_frame: FrameCallback | None) -> FileResult:
    engine = engine_for(settings)
    sampler = FrameSampler(source.path, source.media_type or "", settings.sampling)
    tracker = FaceTracker() if source.media_type == "video" else None
    records: list[tuple] = []
    for frame in sampler:
        faces = engine.detector.detect(frame.image)
        probs = engine.classifier.classify(frame.image, faces)
        ids = tracker.update(faces, frame.timestamp_s) if tracker else list(range(len(faces)))
        head = (source.source, frame.index, frame.timestamp_s, len(faces))
        if not faces:
            records.append(head + (None,) * 16)
        height, width = frame.image.shape[:2]
        for i, (face, track, p) in enumerate(zip(faces, ids, probs)):
            k = int(np.argmax(p))
            records.append(
                head
                + (i, track, *_box(face, width, height), face.score, *p.tolist(), EMOTIONS[k], float(p[k]))
            )
        if settings.annotate_dir is not None:
            target = annotate.annotation_path(
                settings.annotate_dir, source.source, source.media_type, frame.index
            )
            annotate.save(target, annotate.draw(frame.image, faces, ids, probs))
        if on_frame:
            on_frame(1)
    rows = rows_frame(records)
    return FileResult(
        source,
        rows,
        _summary(source, settings, "ok", None, duration_s=sampler.duration_s, **file_stats(rows)),
    )


def process_file(source: Source, settings: Settings, on_frame: FrameCallback | None = None) -> FileResult:
    """Analyse one file. Never raises for a problem with the file: it becomes an error record instead."""
    if source.skip_reason:
        return skipped_result(source, settings)
    started = time.perf_counter()
    try:
        result = _analyse(source, settings, on_frame)
    except MediaError as exc:
        result = FileResult(source, rows_frame([]), _summary(source, settings, "error", str(exc)))
    except Exception as exc:
        log.debug("unexpected failure on %s", source.source, exc_info=True)
        message = f"unexpected {type(exc).__name__}: {exc}"
        result = FileResult(source, rows_frame([]), _summary(source, settings, "error", message))
    result.summary["elapsed_s"] = time.perf_counter() - started
    return result


def _ordered(
    executor: Executor, sources: Sequence[Source], settings: Settings, window: int
) -> Iterator[FileResult]:
    """Submit with a bounded number in flight; yield in submission order (later results wait their turn)."""
    pending: deque[tuple[Source, Future[FileResult]]] = deque()
    todo = iter(sources)
    for source in todo:
        pending.append((source, executor.submit(process_file, source, settings)))
        if len(pending) >= window:
            break
    while pending:
        source, future = pending.popleft()
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. a worker process that died
            message = f"worker failed: {type(exc).__name__}: {exc}"
            result = FileResult(source, rows_frame([]), _summary(source, settings, "error", message))
        yield result
        nxt = next(todo, None)
        if nxt is not None:
            pending.append((nxt, executor.submit(process_file, nxt, settings)))


def run_files(
    sources: Sequence[Source],
    settings: Settings,
    workers: int = 1,
    on_frame: FrameCallback | None = None,
) -> Iterator[FileResult]:
    """Process files and yield their results in the order of `sources`.

    With one worker everything runs in this process (and `on_frame` reports each sampled frame); with more, a
    process pool loads the model once per worker and `on_frame` is not called (progress is per file).
    """
    if workers <= 1 or len(sources) <= 1:
        for source in sources:
            yield process_file(source, settings, on_frame)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a parent holding ONNX/OpenCV threads
    with ProcessPoolExecutor(
        max_workers=min(workers, len(sources)),
        mp_context=context,
        initializer=init_worker,
        initargs=(settings,),
    ) as pool:
        yield from _ordered(pool, sources, settings, window=2 * workers)
