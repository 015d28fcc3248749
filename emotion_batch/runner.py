"""Per-file processing, and running it on any `concurrent.futures.Executor`.

`process_file(source, settings)` is the unit of work: a pure, picklable top-level function whose result (that
file's rows, summary record and identity) is complete or replaced by an error record; it never raises for a
problem with the file. `dispatch` feeds it to an executor - in this process (`InlineExecutor`), to isolated
worker processes (`isolation.IsolatedExecutor`), or to anything else with the Executor interface such as a
Dask client's `get_executor()` - and turns executor-level failures (a crashed worker, a timeout) into error
records too, so one bad file never stops a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from . import annotate
from .classification import Classifier, FrameBatcher, ModelCard
from .defaults import DEFAULT_MAX_PIXELS, PHOTO_MIN_WORKING_WIDTH
from .detection import Detection, Detector, DetectorSpec, create_detector
from .inspection import (
    FileIdentity,
    FileProblem,
    changed_since,
    decoder_path,
    hint_for_decode_failure,
    inspect,
)
from .isolation import IsolatedExecutor, TaskTimedOut, WorkerCrashed, report_frames
from .prestart import WORKER_MODULES, worker_environment
from .reports import file_stats
from .sampling import FrameSampler, MediaError, SamplingPlan
from .schema import EMOTIONS, rows_frame
from .sources import Source, display_name
from .tracking import FaceTracker

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

FrameCallback = Callable[[int], None]

#: Bump when a code change alters the rows for the same model and settings, so state stores reprocess.
ROWS_FORMAT = 3  # 3: frames at least twice the working width are halved by area averaging first


@dataclass(frozen=True)
class Settings:
    """Everything that decides a file's rows; resolved once per run and shipped to workers."""

    sampling: SamplingPlan
    detector: DetectorSpec
    model: ModelCard
    annotate_dir: Path | None = None
    #: Images whose header claims more pixels are refused (decompression bombs).
    max_pixels: int = DEFAULT_MAX_PIXELS


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def describe_settings(settings: Settings) -> dict[str, Any]:
    """The settings that decide the rows, as plain JSON: model and detector by content hash, not by path.

    Stored in the state store and compared on every run, so rows made with different models or sampling are
    never mixed. Output-only options (annotations, pixel limit) are left out on purpose.
    """
    detector = _jsonable(settings.detector)
    detector.pop("path", None)
    model = settings.model
    return {
        "rows_format": ROWS_FORMAT,
        "sampling": {**_jsonable(settings.sampling), "rate": settings.sampling.rate},
        "detector": detector,
        "model": {
            "sha256": model.sha256,
            "labels": list(model.labels),
            "input": [model.height, model.width],
            "crop": _jsonable(model.crop),
        },
    }


@dataclass
class FileResult:
    """One file's complete output: its rows (possibly none), its summary record and its identity.

    Workers fill in plain row tuples; the DataFrame is built where it is used (the parent), so workers never
    import pandas and start faster.
    """

    source: Source
    records: list[tuple]
    summary: dict[str, object] = field(default_factory=dict)
    #: Size, mtime and sha256 as read before analysis; None when the file could not be read.
    identity: FileIdentity | None = None
    #: Remarks for the log that did not stop the analysis (e.g. a misleading extension).
    notes: tuple[str, ...] = ()

    @functools.cached_property
    def rows(self) -> pd.DataFrame:
        """The rows as a DataFrame with the output contract's columns and dtypes."""
        return rows_frame(self.records)

    @property
    def status(self) -> str:
        return str(self.summary["status"])

    @property
    def error(self) -> str | None:
        return self.summary.get("error")  # type: ignore[return-value]


@dataclass
class Engine:
    """The per-process detector and classifier, built once and reused for every file."""

    def __init__(self, settings: Settings) -> None:
        cv2.setNumThreads(1)  # parallelism comes from worker processes, not threads fighting over cores
        spec = settings.detector
        self.detector: Detector = create_detector(spec)
        self.classifier = Classifier(settings.model)
        self._photo_spec = dataclasses.replace(spec, working_width=max(spec.working_width, PHOTO_MIN_WORKING_WIDTH))
        self._same_for_photos = self._photo_spec == spec

    @functools.cached_property
    def photo_detector(self) -> Detector:
        """The detector at no less than PHOTO_MIN_WORKING_WIDTH, for images; built on a worker's first image."""
        return self.detector if self._same_for_photos else create_detector(self._photo_spec)


# Per thread: detectors keep per-call buffers, so two threads must not share one. Local and isolated workers
# run one thread, so this is one engine per process; a Dask worker gets one per worker thread.
_engines = threading.local()


def engine_for(settings: Settings) -> Engine:
    """This thread's engine for the settings, created on first use (one ONNX session per worker)."""
    key = (settings.detector, settings.model)
    cached: tuple[tuple[DetectorSpec, ModelCard], Engine] | None = getattr(_engines, "value", None)
    if cached is None or cached[0] != key:
        cached = (key, Engine(settings))
        _engines.value = cached
    return cached[1]


def init_worker(settings: Settings) -> None:
    """Worker initializer: load the model and detector before the first file arrives."""
    engine_for(settings)


def _summary(
    source: Source,
    settings: Settings,
    status: str,
    error: str | None,
    *,
    kind: str | None = None,
    media_type: str | None = None,
    **stats: object,
) -> dict:
    return {
        "source": source.source,
        "path": display_name(str(source.path)),
        "media_type": media_type or source.media_type,
        "status": status,
        "error": error,
        "error_kind": kind,
        "detector": settings.detector.name,
        "detector_sha256": settings.detector.sha256,
        "model": settings.model.name,
        "model_sha256": settings.model.sha256,
        **stats,
    }


def skipped_result(source: Source, settings: Settings) -> FileResult:
    """The record of a file that is not analysed (e.g. not a media extension)."""
    return FileResult(source, [], _summary(source, settings, "skipped", source.skip_reason))


def error_result(
    source: Source, settings: Settings, kind: str, message: str, media_type: str | None = None
) -> FileResult:
    """The record of a file that failed, with its error kind (see schema.ERROR_KINDS) and message."""
    summary = _summary(source, settings, "error", message, kind=kind, media_type=media_type)
    return FileResult(source, [], summary)


def failure_result(source: Source, settings: Settings, exc: BaseException) -> FileResult:
    """The record of a file whose task failed outside `process_file`: a dead or stopped worker."""
    if isinstance(exc, TaskTimedOut):
        return error_result(source, settings, "timeout", str(exc))
    if isinstance(exc, WorkerCrashed):
        return error_result(source, settings, "crashed", str(exc))
    if type(exc).__name__ == "KilledWorker":  # Dask: the task took down every worker it was tried on
        return error_result(
            source, settings, "crashed", f"Dask workers died while analysing this file: {exc}"
        )
    return error_result(source, settings, "internal", f"worker failed: {type(exc).__name__}: {exc}")


def _box(face: Detection, width: int, height: int) -> tuple[int, int, int, int]:
    """The face box clipped to the frame, in integer pixels, as written to the CSV."""
    x0, y0 = max(0, round(face.x)), max(0, round(face.y))
    x1, y1 = min(width, round(face.x + face.w)), min(height, round(face.y + face.h))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


@dataclass
class _Sampled:
    """What is kept of a sampled frame while its faces wait for their batch's classification."""

    index: int
    timestamp_s: float
    height: int
    width: int
    faces: list[Detection]
    ids: list[int]
    image: np.ndarray | None  # only when annotating


def _analyse(
    source: Source, media_type: str, path: Path, settings: Settings, on_frame: FrameCallback | None
) -> FileResult:
    engine = engine_for(settings)
    sampler = FrameSampler(path, media_type, settings.sampling)
    tracker = FaceTracker() if media_type == "video" else None
    batcher: FrameBatcher[_Sampled] = FrameBatcher(engine.classifier)
    records: list[tuple] = []

    def emit(frame: _Sampled, probs: np.ndarray) -> None:
        head = (source.source, frame.index, frame.timestamp_s, len(frame.faces))
        if not frame.faces:
            records.append(head + (None,) * 16)
        for i, (face, track, p) in enumerate(zip(frame.faces, frame.ids, probs)):
            k = int(np.argmax(p))
            box = _box(face, frame.width, frame.height)
            records.append(head + (i, track, *box, face.score, *p.tolist(), EMOTIONS[k], float(p[k])))
        if frame.image is not None and settings.annotate_dir is not None:
            target = annotate.annotation_path(settings.annotate_dir, source.source, media_type, frame.index)
            annotate.save(target, annotate.draw(frame.image, frame.faces, frame.ids, probs))
        if on_frame:
            on_frame(1)

    for frame in sampler:
        faces = (engine.photo_detector if media_type == "image" else engine.detector).detect(frame.image)
        ids = tracker.update(faces, frame.timestamp_s) if tracker else list(range(len(faces)))
        kept = frame.image if settings.annotate_dir is not None else None
        sampled = _Sampled(frame.index, frame.timestamp_s, *frame.image.shape[:2], faces, ids, kept)
        for done, probs in batcher.add(sampled, frame.image, faces):
            emit(done, probs)
    for done, probs in batcher.flush():
        emit(done, probs)
    stats = {"duration_s": sampler.duration_s, **file_stats(records)}
    return FileResult(source, records, _summary(source, settings, "ok", None, media_type=media_type, **stats))


def process_file(source: Source, settings: Settings, on_frame: FrameCallback | None = None) -> FileResult:
    """Analyse one file. Never raises for a problem with the file: it becomes an error record instead.

    The file is inspected first (readable, regular, not empty, real format, pixel count, complete container)
    and fingerprinted; if it changes while being analysed the result is an error, retried on the next run.
    """
    if source.skip_reason:
        return skipped_result(source, settings)
    started = time.perf_counter()
    inspection = None
    try:
        inspection = inspect(source.path, source.media_type or "", settings.max_pixels)
        media_type = inspection.media_type
        decodable = (
            decoder_path(source.path) if media_type == "video" else contextlib.nullcontext(source.path)
        )
        with decodable as path:
            result = _analyse(source, media_type, path, settings, on_frame)
        if changed_since(source.path, inspection.identity):
            raise FileProblem(
                "changed",
                "the file changed while it was being analysed (still being written?); it will be analysed "
                "again on the next run",
            )
    except FileProblem as exc:
        result = error_result(source, settings, exc.kind, str(exc), inspection and inspection.media_type)
    except MediaError as exc:
        message = str(exc)
        kind = "no_frames" if message.startswith("no decodable") else "undecodable"
        if kind == "undecodable" and not message.startswith(("empty file", "cannot read")):
            message = f"{message}; {hint_for_decode_failure(inspection)}"
        result = error_result(source, settings, kind, message, inspection and inspection.media_type)
    except Exception as exc:
        log.debug("unexpected failure on %s", source.source, exc_info=True)
        result = error_result(source, settings, "internal", f"unexpected {type(exc).__name__}: {exc}")
    if inspection is not None:
        result.identity = inspection.identity
        result.notes = inspection.notes
    result.summary["elapsed_s"] = time.perf_counter() - started
    return result


# --- executors ---------------------------------------------------------------------------------------------------
class InlineExecutor(Executor):
    """Runs each task in the calling thread at submission: the Executor interface without processes."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - delivered through the future, like other executors
                future.set_exception(exc)
        return future


class FrameCounter:
    """Frames reported from worker threads or processes, collected for the main thread's progress display."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._count += n

    def take(self) -> int:
        with self._lock:
            n, self._count = self._count, 0
            return n


@dataclass
class ExecutorPlan:
    """An executor with what to pass as each task's per-frame callback, and how many tasks to keep queued.

    `finish()` after the last result, `abort()` on errors or a second Ctrl-C (both idempotent; abort after
    finish does nothing), so callers need not know which kind of executor they hold.
    """

    executor: Executor
    frame_hook: FrameCallback | None
    window: int
    frames: FrameCounter | None = None
    #: Called once the executor is shut down (e.g. to close a Dask client).
    on_close: Callable[[], None] | None = None
    _closed: bool = field(default=False, init=False, repr=False)

    def finish(self) -> None:
        """Wait for the executor to wind down cleanly."""
        if not self._closed:
            self.executor.shutdown(wait=True)
            self._close()

    def abort(self) -> None:
        """Stop now: kill isolated workers, cancel what an executor allows to cancel."""
        if self._closed:
            return
        terminate = getattr(self.executor, "terminate", None)
        try:
            if terminate is not None:
                terminate()
            else:
                self.executor.shutdown(wait=False)
        finally:
            self._close()

    def _close(self) -> None:
        self._closed = True
        if self.on_close is not None:
            self.on_close()


def local_executor(
    settings: Settings,
    workers: int,
    *,
    isolate: bool,
    file_timeout: float | None = None,
    on_frame: FrameCallback | None = None,
    quiet: bool = True,
) -> ExecutorPlan:
    """This machine's executor: isolated worker processes, or this process when `isolate` is false."""
    if not isolate:
        return ExecutorPlan(InlineExecutor(), on_frame, 1)
    frames = FrameCounter()
    executor = IsolatedExecutor(
        workers,
        initializer=init_worker,
        initargs=(settings,),
        task_timeout=file_timeout,
        on_frames=frames.add,
        quiet=quiet,
        environment=worker_environment(settings.max_pixels, workers),
        preload=WORKER_MODULES,
    )
    return ExecutorPlan(executor, report_frames, 2 * workers, frames)


def expected_cost(source: Source) -> int:
    """A rough measure of a file's work, for starting the biggest files first.

    With several workers, a long video started last keeps one core busy while the others idle; starting the
    largest files first (longest-processing-time-first scheduling) evens out the finish. Videos cost far more
    than images, and a video's size tracks its decoding work (bitrate times duration).
    """
    if source.skip_reason:
        return 0
    try:
        size = source.path.stat().st_size
    except OSError:
        return 0
    return size * (64 if source.media_type == "video" else 1)


def dispatch(
    plan: ExecutorPlan,
    sources: Sequence[Source],
    settings: Settings,
    *,
    on_frames: FrameCallback | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    poll_s: float = 0.2,
) -> Iterator[FileResult]:
    """Run `process_file` for each source on the plan's executor, largest first; yield results as they complete.

    At most `plan.window` tasks are submitted ahead. When `should_stop()` turns true, nothing more is
    submitted, queued tasks are cancelled and only the files already being analysed are waited for and yielded.
    """
    todo = deque(sorted(sources, key=expected_cost, reverse=True))
    pending: dict[Future, tuple[int, Source]] = {}
    order = {s.source: i for i, s in enumerate(sources)}
    stopping = False
    while todo or pending:
        if not stopping and should_stop():
            stopping = True
            todo.clear()
            for future in list(pending):
                if future.cancel():  # succeeds only for tasks not yet started
                    del pending[future]
            if not pending:
                break
        while todo and len(pending) < plan.window:
            source = todo.popleft()
            future = plan.executor.submit(process_file, source, settings, plan.frame_hook)
            pending[future] = (order[source.source], source)
        done, _ = wait(list(pending), timeout=poll_s, return_when=FIRST_COMPLETED)
        if plan.frames is not None and on_frames is not None:
            n = plan.frames.take()
            if n:
                on_frames(n)
        for future in sorted(done, key=lambda f: pending[f][0]):
            _, source = pending.pop(future)
            if future.cancelled():
                continue
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - a crashed or timed-out worker, a broken executor
                result = failure_result(source, settings, exc)
            yield result
