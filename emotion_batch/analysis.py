"""Per-file analysis: one file in, its rows, summary and identity out. This is what a worker runs.

`process_file(source, settings)` is the unit of work: a pure, picklable top-level function whose result (that
file's rows, summary record and identity) is complete or replaced by an error record; it never raises for a
problem with the file. Where it runs (this process, isolated workers, a Dask cluster) is `batch.executors`'
business; this module imports nothing from `batch` or `output`, so a worker loads neither charts nor pandas.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .defaults import DEFAULT_MAX_PIXELS, PHOTO_MIN_WORKING_WIDTH
from .media.inspection import (
    FileIdentity,
    FileProblem,
    changed_since,
    decoder_path,
    hint_for_decode_failure,
    inspect,
)
from .media.sampling import FrameSampler, MediaError, SamplingPlan
from .media.sources import Source, display_name
from .schema import EMOTIONS, FileSummary, Row, dominant_emotion, rows_frame
from .vision import annotate
from .vision.annotate import encode_jpeg, face_crop
from .vision.classification import Classifier, FrameBatcher, ModelCard
from .vision.detection import Detection, Detector, DetectorSpec, create_detector
from .vision.shots import ShotDetector
from .vision.tracking import FaceTracker, confirmed_ids

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

FrameCallback = Callable[[int], None]

#: Bump when a code change alters the rows for the same model and settings, so state stores reprocess.
#: 3: frames at least twice the working width are halved by area averaging first; 4: a `shot` column, and
#: tracks use appearance and end at hard cuts (`vision.shots`); 5: a face seen in one sample of a video has no
#: track id, and the others are renumbered (`vision.tracking.confirmed_ids`).
ROWS_FORMAT = 5


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
    records: list[Row]
    summary: FileSummary = field(default_factory=FileSummary)
    #: Size, mtime and sha256 as read before analysis; None when the file could not be read.
    identity: FileIdentity | None = None
    #: Remarks for the log that did not stop the analysis (e.g. a misleading extension).
    notes: tuple[str, ...] = ()
    #: One JPEG per person, {(shot, track_id): bytes}: the crop of its sample with the highest det_score x box
    #: area (the earliest on a tie), cut from the frame while it was at hand, so nothing is decoded twice.
    thumbnails: dict[tuple[int, int], bytes] = field(default_factory=dict)

    @functools.cached_property
    def rows(self) -> pd.DataFrame:
        """The rows as a DataFrame with the output contract's columns and dtypes."""
        return rows_frame(self.records)

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def error(self) -> str | None:
        return self.summary.get("error")


@dataclass
class Engine:
    """The per-process detector and classifier, built once and reused for every file."""

    def __init__(self, settings: Settings) -> None:
        cv2.setNumThreads(1)  # parallelism comes from worker processes, not threads fighting over cores
        spec = settings.detector
        self.detector: Detector = create_detector(spec)
        self.classifier = Classifier(settings.model)
        self._photo_spec = dataclasses.replace(
            spec, working_width=max(spec.working_width, PHOTO_MIN_WORKING_WIDTH)
        )
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
    stats: FileSummary | None = None,
) -> FileSummary:
    summary = FileSummary(
        source=source.source,
        path=display_name(str(source.path)),
        media_type=media_type or source.media_type,
        status=status,
        error=error,
        error_kind=kind,
        detector=settings.detector.name,
        detector_sha256=settings.detector.sha256,
        model=settings.model.name,
        model_sha256=settings.model.sha256,
    )
    summary.update(stats or {})
    return summary


def file_stats(rows: Sequence[Row]) -> FileSummary:
    """The summary numbers of one file's rows (see schema.FileSummary).

    Works on the `Row` tuples rather than a DataFrame so that analysis workers never need pandas.
    """
    faces = [r for r in rows if r.n_faces]
    frames = {r.frame_index: bool(r.n_faces) for r in rows}
    probs = np.array([[getattr(r, e) for e in EMOTIONS] for r in faces], dtype=np.float64)
    probs = probs.reshape(len(faces), len(EMOTIONS))
    means = {
        f"mean_{e}": (float(probs[:, k].mean()) if len(faces) else np.nan) for k, e in enumerate(EMOTIONS)
    }
    dominant = dominant_emotion(means)  # the one rule of the CSVs, charts and report; None without faces
    stats = FileSummary(
        frames_sampled=len(frames),
        frames_with_faces=sum(frames.values()),
        faces=len(faces),  # every face, those without a track id (seen in one sample) too
        tracks=len({r.track_id for r in faces if r.track_id is not None}),
        dominant_emotion=dominant,
    )
    stats.update(means)  # type: ignore[typeddict-item]  # keys built from EMOTIONS, checked in schema
    return stats


def skipped_result(source: Source, settings: Settings) -> FileResult:
    """The record of a file that is not analysed (e.g. not a media extension)."""
    return FileResult(source, [], _summary(source, settings, "skipped", source.skip_reason))


def error_result(
    source: Source, settings: Settings, kind: str, message: str, media_type: str | None = None
) -> FileResult:
    """The record of a file that failed, with its error kind (see schema.ERROR_KINDS) and message."""
    summary = _summary(source, settings, "error", message, kind=kind, media_type=media_type)
    return FileResult(source, [], summary)


def _box(face: Detection, width: int, height: int) -> tuple[int, int, int, int]:
    """The face box clipped to the frame, in integer pixels, as written to the CSV."""
    x0, y0 = max(0, round(face.x)), max(0, round(face.y))
    x1, y1 = min(width, round(face.x + face.w)), min(height, round(face.y + face.h))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def frame_rows(
    source: str,
    index: int,
    timestamp_s: float,
    shot: int,
    size: tuple[int, int],
    faces: Sequence[Detection],
    ids: Sequence[int],
    probs: np.ndarray,
) -> list[Row]:
    """One sampled frame's rows (the output contract): one per face, or one `Row.no_face` when there is none.

    `size` is the frame's (height, width), to clip the boxes; `probs` the classifier's [faces, 7] output. The
    live command builds its rows with this too, so batch and live rows are the same.
    """
    if not faces:
        return [Row.no_face(source, index, timestamp_s, shot)]
    height, width = size
    rows = []
    for i, (face, track, p) in enumerate(zip(faces, ids, probs)):
        k = int(np.argmax(p))
        head = (
            source,
            index,
            timestamp_s,
            shot,
            len(faces),
            i,
            track,
            *_box(face, width, height),
            face.score,
        )
        rows.append(Row._make((*head, *p.tolist(), EMOTIONS[k], float(p[k]))))
    return rows


@dataclass
class _Sampled:
    """What is kept of a sampled frame while its faces wait for their batch's classification."""

    index: int
    timestamp_s: float
    shot: int
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
    video = media_type == "video"
    tracker = FaceTracker() if video else None
    shots = ShotDetector() if video else None
    batcher: FrameBatcher[_Sampled] = FrameBatcher(engine.classifier)
    records: list[Row] = []
    best: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
    # A video's annotated frames are labelled once its track ids are final: until then each frame waits on disk,
    # unlabelled, in its place (memory stays flat however long the video).
    unlabelled: list[tuple[Path, list[Detection], list[int], np.ndarray]] = []

    def emit(frame: _Sampled, probs: np.ndarray) -> None:
        size = (frame.height, frame.width)
        records.extend(
            frame_rows(
                source.source, frame.index, frame.timestamp_s, frame.shot, size, frame.faces, frame.ids, probs
            )
        )
        if frame.image is not None and settings.annotate_dir is not None:
            target = annotate.annotation_path(settings.annotate_dir, source.source, media_type, frame.index)
            if video and frame.faces:
                annotate.save(target, frame.image)
                unlabelled.append((target, frame.faces, frame.ids, probs))
            else:
                annotate.save(target, annotate.draw(frame.image, frame.faces, frame.ids, probs))
        if on_frame:
            on_frame(1)

    for frame in sampler:
        faces = (engine.photo_detector if media_type == "image" else engine.detector).detect(frame.image)
        shot = shots.update(frame.image, frame.timestamp_s) if shots else 0
        if tracker:
            ids = tracker.update(faces, frame.timestamp_s, image=frame.image, shot=shot)
        else:
            ids = list(range(len(faces)))
        kept = frame.image if settings.annotate_dir is not None else None
        height, width = frame.image.shape[:2]
        for face, track in zip(faces, ids):  # the thumbnail rule of `output.thumbnails.best_samples`
            box = _box(face, width, height)
            score = float(face.score) * box[2] * box[3]
            if box[2] > 0 and box[3] > 0 and score > best.get((shot, track), (-1.0,))[0]:
                best[(shot, track)] = (score, face_crop(frame.image, box))
        sampled = _Sampled(frame.index, frame.timestamp_s, shot, height, width, faces, ids, kept)
        for done, probs in batcher.add(sampled, frame.image, faces):
            emit(done, probs)
    for done, probs in batcher.flush():
        emit(done, probs)
    if video:  # the file is tracked: faces seen in one sample lose their id, the others are renumbered
        final = confirmed_ids(r.track_id for r in records)
        records = [r._replace(track_id=final[r.track_id]) if r.track_id is not None else r for r in records]
        best = {(shot, new): v for (shot, t), v in best.items() if (new := final[t]) is not None}
        for target, faces, ids, probs in unlabelled:
            annotate.relabel(target, faces, [final[i] for i in ids], probs)
    stats = file_stats(records)
    stats["duration_s"] = sampler.duration_s
    summary = _summary(source, settings, "ok", None, media_type=media_type, stats=stats)
    thumbnails = {key: encode_jpeg(piece) for key, (_, piece) in best.items()}
    return FileResult(source, records, summary, thumbnails=thumbnails)


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
        result = error_result(
            source, settings, exc.kind, str(exc), inspection.media_type if inspection else None
        )
    except MediaError as exc:
        message = str(exc)
        if exc.needs_hint:
            message = f"{message}; {hint_for_decode_failure(inspection)}"
        result = error_result(
            source, settings, exc.kind, message, inspection.media_type if inspection else None
        )
    except Exception as exc:
        log.debug("unexpected failure on %s", source.source, exc_info=True)
        result = error_result(source, settings, "internal", f"unexpected {type(exc).__name__}: {exc}")
    if inspection is not None:
        result.identity = inspection.identity
        result.notes = inspection.notes
    result.summary["elapsed_s"] = time.perf_counter() - started
    return result
