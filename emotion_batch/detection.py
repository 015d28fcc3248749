"""Finding faces: YuNet (cv2.FaceDetectorYN) at a capped working width, or a Haar cascade where OpenCV has one.

Detection runs on a downscaled copy (default 640 px wide) because its cost grows with pixels while faces worth
classifying stay detectable; boxes are mapped back to full-resolution coordinates for cropping and output.
Choosing and locating the detector (`resolve_detector`) happens once in the parent process, so a missing file
is one clear error up front; workers only build the detector from the resolved, picklable `DetectorSpec`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .defaults import DEFAULT_MIN_FACE, DEFAULT_SCORE_THRESHOLD, DEFAULT_WORKING_WIDTH, DETECTOR_CHOICES
from .digest import sha256_file
from .fetch import cached_yunet_path

log = logging.getLogger(__name__)

#: Environment variable naming the YuNet ONNX file.
DETECTOR_MODEL_ENV = "EMOTION_BATCH_DETECTOR_MODEL"
_HAAR_FILE = "haarcascade_frontalface_default.xml"


class DetectorUnavailable(Exception):
    """The requested detector cannot be used here; the message tells the user what to do."""


@dataclass(frozen=True)
class Detection:
    """One face in full-resolution pixel coordinates. The box may extend past the frame edges."""

    x: float
    y: float
    w: float
    h: float
    score: float


@dataclass(frozen=True)
class DetectorSpec:
    """Everything a worker needs to build the same detector: picklable, resolved once per run."""

    kind: str  # "yunet" or "haar"
    path: Path
    sha256: str
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    min_face: int = DEFAULT_MIN_FACE
    working_width: int = DEFAULT_WORKING_WIDTH
    nms_threshold: float = 0.3

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.path.name}"


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[Detection]: ...


def haar_available() -> bool:
    """Haar cascades were removed from OpenCV 5; they exist only on OpenCV 4.x builds."""
    return hasattr(cv2, "CascadeClassifier") and hasattr(cv2, "data")


def locate_yunet(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Find the YuNet file: an explicit path, then $EMOTION_BATCH_DETECTOR_MODEL, then the user cache.

    An explicit path or environment variable that names a missing file is an error, not a silent fallback.
    """
    for given, origin in (
        (explicit, "--detector-model"),
        (os.environ.get(DETECTOR_MODEL_ENV), DETECTOR_MODEL_ENV),
    ):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise DetectorUnavailable(f"YuNet model file not found: {path} (from {origin})")
            return path
    cached = cached_yunet_path()
    return cached if cached.is_file() else None


def _fetch_hint() -> str:
    return (
        "run `emotion-batch models fetch` to download YuNet into the cache "
        f"({cached_yunet_path()}), or point --detector-model / ${DETECTOR_MODEL_ENV} at the ONNX file"
    )


def resolve_detector(
    choice: str = "auto",
    model_path: str | os.PathLike[str] | None = None,
    *,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    min_face: int = DEFAULT_MIN_FACE,
    working_width: int = DEFAULT_WORKING_WIDTH,
) -> DetectorSpec:
    """Turn the user's `--detector` choice into a concrete detector, failing with a clear message."""
    if choice not in DETECTOR_CHOICES:
        raise DetectorUnavailable(f"unknown detector {choice!r}; choose one of {', '.join(DETECTOR_CHOICES)}")
    common = {"score_threshold": score_threshold, "min_face": min_face, "working_width": working_width}
    if choice in ("auto", "yunet"):
        path = locate_yunet(model_path)
        if path is not None:
            return DetectorSpec(kind="yunet", path=path, sha256=sha256_file(path), **common)
        if choice == "yunet":
            raise DetectorUnavailable(f"YuNet model file not found; {_fetch_hint()}")
    if haar_available():
        path = Path(cv2.data.haarcascades) / _HAAR_FILE
        if choice == "auto":
            log.warning(
                "YuNet model file not found, using the Haar cascade (less accurate); %s", _fetch_hint()
            )
        return DetectorSpec(kind="haar", path=path, sha256=sha256_file(path), **common)
    if choice == "haar":
        raise DetectorUnavailable(
            f"Haar cascades are not available in OpenCV {cv2.__version__} (removed in OpenCV 5); "
            f"use --detector yunet: {_fetch_hint()}"
        )
    raise DetectorUnavailable(
        f"no face detector available: YuNet model file not found and OpenCV {cv2.__version__} has no Haar "
        f"cascades; {_fetch_hint()}"
    )


def _working_copy(image: np.ndarray, working_width: int) -> tuple[np.ndarray, float]:
    """Downscale wide frames to the working width; return the copy and the factor back to full resolution."""
    width = image.shape[1]
    if width <= working_width:
        return image, 1.0
    scale = working_width / width
    size = (working_width, max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), 1.0 / scale


def _ordered(faces: list[Detection]) -> list[Detection]:
    """Left to right, then top to bottom, so face_index is reproducible and readable."""
    return sorted(faces, key=lambda d: (d.x, d.y))


class YuNetDetector:
    """cv2.FaceDetectorYN wrapper; one instance per worker, input size updated per frame size."""

    def __init__(self, spec: DetectorSpec) -> None:
        self.spec = spec
        # OpenCV 5 prints a "targets are not supported" warning for every FaceDetectorYN: keep logs clean.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._net = cv2.FaceDetectorYN.create(
                str(spec.path), "", (320, 320), spec.score_threshold, spec.nms_threshold, 5000
            )
        except cv2.error as exc:
            raise DetectorUnavailable(f"cannot load YuNet from {spec.path}: {exc}") from exc
        self._size: tuple[int, int] | None = None

    def detect(self, image: np.ndarray) -> list[Detection]:
        small, back = _working_copy(image, self.spec.working_width)
        size = (small.shape[1], small.shape[0])
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, faces = self._net.detect(small)
        if faces is None:
            return []
        found = [
            Detection(
                float(f[0]) * back, float(f[1]) * back, float(f[2]) * back, float(f[3]) * back, float(f[14])
            )
            for f in faces
        ]
        return _ordered([d for d in found if min(d.w, d.h) >= self.spec.min_face])


class HaarDetector:
    """OpenCV 4.x Haar cascade, for installations without the YuNet file. It has no score: 1.0 is reported."""

    def __init__(self, spec: DetectorSpec) -> None:
        self.spec = spec
        self._cascade = cv2.CascadeClassifier(str(spec.path))  # type: ignore[attr-defined]
        if self._cascade.empty():
            raise DetectorUnavailable(f"cannot load the Haar cascade from {spec.path}")

    def detect(self, image: np.ndarray) -> list[Detection]:
        small, back = _working_copy(image, self.spec.working_width)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        min_size = max(1, int(self.spec.min_face / back))
        boxes = self._cascade.detectMultiScale(
            grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size)
        )
        return _ordered([Detection(x * back, y * back, w * back, h * back, 1.0) for (x, y, w, h) in boxes])


def create_detector(spec: DetectorSpec) -> Detector:
    """Build the detector a spec describes (in the process that will use it)."""
    return YuNetDetector(spec) if spec.kind == "yunet" else HaarDetector(spec)
