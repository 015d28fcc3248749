"""Finding faces: YuNet at a capped working width, or a Haar cascade where OpenCV has one.

Detection runs on a downscaled copy (default 512 px wide) because its cost grows with pixels while faces worth
classifying stay detectable; boxes are mapped back to full-resolution coordinates for cropping and output.
Choosing and locating the detector (`resolve_detector`) happens once in the parent process, so a missing file
is one clear error up front; workers only build the detector from the resolved, picklable `DetectorSpec`. Inside
`download_if_missing()` (the main command's run) a missing YuNet is first downloaded into the user cache.

YuNet is the network of `cv2.FaceDetectorYN`, run through onnxruntime with FaceDetectorYN's own pre- and
post-processing (zero padding to a multiple of 32, raw BGR input, score = sqrt(cls * obj), NMS on integer
boxes). It finds the same faces, and onnxruntime runs this network about 2.7x faster on one CPU thread than
OpenCV's DNN module (640x384: ~3.8 ms against ~10.4 ms, OpenCV 5.0 / onnxruntime 1.31), which is most of the
pipeline's cost per sampled frame. The published file fixes the input at 640x640, so the runtime makes the
input and output sizes symbolic in memory (`free_io_dims`; the file on disk and its sha256 are untouched).
`OpenCVYuNetDetector` keeps the plain FaceDetectorYN path as the reference (benchmarks, tests) and as the
fallback for a YuNet file onnxruntime cannot run.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import onnxruntime as ort

from ..defaults import DEFAULT_MIN_FACE, DEFAULT_SCORE_THRESHOLD, DEFAULT_WORKING_WIDTH, DETECTOR_CHOICES
from ..files import file_digest
from .fetch import FetchError, cached_yunet_path, detector_url, fetch_yunet, offline_hint, terminal_progress
from .onnx import inference_session

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
        f"({cached_yunet_path()}) or, offline, `emotion-batch models fetch --from FILE`; or point "
        f"--detector-model / ${DETECTOR_MODEL_ENV} at the ONNX file"
    )


# Empty, except inside `download_if_missing()`: {"progress": whether to draw progress on the terminal}.
_download: dict[str, bool] = {}


@contextlib.contextmanager
def download_if_missing(show_progress: bool = False) -> Iterator[None]:
    """Within this block `resolve_detector` downloads YuNet into the user cache when it finds no file (and no
    file was named): the main command's first run on a connected machine needs no `models fetch`.

    `show_progress` redraws one progress line on stderr (a terminal); otherwise one log line says what is
    downloaded from where. The library (`analyze()`) and `models info` never download.
    """
    saved = dict(_download)
    _download.clear()
    _download["progress"] = show_progress
    try:
        yield
    finally:
        _download.clear()
        _download.update(saved)


def _download_yunet(show_progress: bool) -> Path:
    """Fetch YuNet into the cache (verified, atomic) or raise DetectorUnavailable with the one-line way out."""
    url, target = detector_url(), cached_yunet_path()
    drawn: list[int] = []
    bar = terminal_progress() if show_progress else None

    def progress(nbytes: int) -> None:
        drawn.append(nbytes)
        if bar is not None:
            bar(nbytes)

    if bar is None:
        log.info("no face detector installed: downloading YuNet (228 kB) from %s into %s", url, target)
    ended = "\n"
    try:
        path = fetch_yunet(url=url, timeout=30.0, progress=progress)
        ended = ", sha256 verified\n"
    except FetchError as exc:
        reason = " ".join(str(exc).split())  # one line, whatever the underlying error printed
        reason = reason.removeprefix(f"could not read {url}: ")  # the hint names the URL
        raise DetectorUnavailable(
            f"cannot download the YuNet face detector: {reason}; {offline_hint(url)}"
        ) from exc
    finally:
        if bar is not None and drawn:  # end the progress line
            sys.stderr.write(ended)
            sys.stderr.flush()
    return path


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

    def spec(kind: str, path: Path) -> DetectorSpec:
        return DetectorSpec(kind, path, file_digest(path), score_threshold, min_face, working_width)

    if choice in ("auto", "yunet"):
        path = locate_yunet(model_path)
        if path is None and _download:
            try:
                path = _download_yunet(_download["progress"])
            except DetectorUnavailable as exc:
                if choice == "yunet" or not haar_available():
                    raise
                log.warning("%s; using the Haar cascade (less accurate)", exc)
                return spec("haar", Path(cv2.data.haarcascades) / _HAAR_FILE)  # type: ignore[attr-defined]
        if path is not None:
            return spec("yunet", path)
        if choice == "yunet":
            raise DetectorUnavailable(f"YuNet model file not found; {_fetch_hint()}")
    if haar_available():
        path = Path(cv2.data.haarcascades) / _HAAR_FILE  # type: ignore[attr-defined]  # OpenCV 4.x only
        if choice == "auto":
            log.warning(
                "YuNet model file not found, using the Haar cascade (less accurate); %s", _fetch_hint()
            )
        return spec("haar", path)
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
    """Downscale wide frames to the working width; return the copy and the factor back to full resolution.

    Bilinear does the last step, of less than 2x (it still averages every source pixel in, and costs a quarter
    of INTER_AREA: 0.45 ms against 1.8 ms from 960x540). Wider frames are first halved by area averaging, which
    has a fast path for exact halves (0.5 ms from 1920x1080), so bilinear never aliases away small faces; one
    INTER_AREA resize from 1920 to 512 px costs 7 ms.
    """
    small, back = image, 1.0
    while small.shape[1] >= 2 * working_width and small.shape[0] >= 2:  # a 1-px strip cannot be halved
        height, width = small.shape[:2]
        even = small[: height - height % 2, : width - width % 2]  # an odd last row or column is left out
        small = cv2.resize(even, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        back *= 2.0
    if small.shape[1] > working_width:
        scale = working_width / small.shape[1]
        size = (working_width, max(1, round(small.shape[0] * scale)))
        small = cv2.resize(small, size, interpolation=cv2.INTER_LINEAR)
        back /= scale
    return small, back


def _ordered(faces: list[Detection]) -> list[Detection]:
    """Left to right, then top to bottom, so face_index is reproducible and readable."""
    return sorted(faces, key=lambda d: (d.x, d.y))


# --- YuNet through onnxruntime -----------------------------------------------------------------------------------
# A few lines of protobuf wire format, so that no `onnx` package is needed at run time. An ONNX file is a
# ModelProto; the path to a tensor dimension is ModelProto.graph (7) -> GraphProto.input (11) / output (12) ->
# ValueInfoProto.type (2) -> TypeProto.tensor_type (1) -> shape (2) -> dim (1), and a Dimension holds either
# dim_value (1, an integer) or dim_param (2, a name).
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _fields(buf: bytes) -> Iterator[tuple[int, int, int, int | None]]:
    """The fields of a serialized message: (number, start, end, payload start); the payload start is None for
    anything but length-delimited fields (the only kind these helpers look into)."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        body = None
        if wire_type == 0:
            _, pos = _varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, body = _varint(buf, pos)
            pos = body + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        yield number, start, pos, body


def _map_fields(
    buf: bytes, rewrite: dict[int, Callable[[bytes], bytes | None]], first_only: bool = False
) -> bytes:
    """`buf` (a serialized message) with the payload of each length-delimited field in `rewrite` rewritten, or
    dropped where the rewrite returns None."""
    out, done = bytearray(), set()
    for number, start, end, body in _fields(buf):
        if body is not None and number in rewrite and not (first_only and number in done):
            done.add(number)
            payload = rewrite[number](buf[body:end])
            if payload is not None:
                out += _length_delimited(number, payload)
        else:
            out += buf[start:end]
    return bytes(out)


def _string_field(buf: bytes, wanted: int) -> str | None:
    """The first length-delimited field `wanted` of a serialized message as text (e.g. a ValueInfoProto's name)."""
    for number, _, end, body in _fields(buf):
        if number == wanted and body is not None:
            return buf[body:end].decode("utf-8", "replace")
    return None


def free_io_dims(model: bytes, keep_outputs: Collection[str] | None = None) -> bytes:
    """An ONNX model with every dimension of its first input and of its outputs made symbolic (d0, d1, ...).

    With `keep_outputs`, the other graph outputs are dropped, and onnxruntime then skips the nodes that only
    they needed (YuNet's landmark heads: about 8% of its time).
    """
    names = itertools.count()

    def dim(_: bytes) -> bytes:
        return _length_delimited(2, f"d{next(names)}".encode())

    def shape(payload: bytes) -> bytes:
        return _map_fields(payload, {1: dim})

    def tensor_type(payload: bytes) -> bytes:
        return _map_fields(payload, {2: shape})

    def value_info(payload: bytes) -> bytes:
        return _map_fields(payload, {2: lambda type_proto: _map_fields(type_proto, {1: tensor_type})})

    def output(payload: bytes) -> bytes | None:
        if keep_outputs is not None and _string_field(payload, 1) not in keep_outputs:
            return None
        return value_info(payload)

    def graph(payload: bytes) -> bytes:
        # Only the first input: old exporters also list weights as graph inputs, and those keep their shapes.
        return _map_fields(_map_fields(payload, {11: value_info}, first_only=True), {12: output})

    return _map_fields(model, {7: graph})


_YUNET_STRIDES = (8, 16, 32)
_YUNET_OUTPUTS = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox") for s in _YUNET_STRIDES]


def yunet_decode(
    outputs: list[np.ndarray], pad_w: int, score_threshold: float, nms_threshold: float, top_k: int
) -> np.ndarray:
    """FaceDetectorYN's post-processing: [N, 5] rows of x, y, w, h, score in padded-input pixels, best first."""
    boxes, scores = [], []
    for i, stride in enumerate(_YUNET_STRIDES):
        cls = np.clip(outputs[i].reshape(-1), 0.0, 1.0)
        obj = np.clip(outputs[i + 3].reshape(-1), 0.0, 1.0)
        score = np.sqrt(cls * obj)
        keep = np.flatnonzero(score >= score_threshold)
        if not len(keep):
            continue
        cols = pad_w // stride
        bbox = outputs[i + 6].reshape(-1, 4)[keep]
        cx = (keep % cols + bbox[:, 0]) * stride
        cy = (keep // cols + bbox[:, 1]) * stride
        w, h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
        boxes.append(np.stack([cx - w / 2, cy - h / 2, w, h], axis=1))
        scores.append(score[keep])
    if not boxes:
        return np.empty((0, 5), dtype=np.float32)
    found = np.concatenate([np.concatenate(boxes), np.concatenate(scores)[:, None]], axis=1)
    if len(found) > 1:
        # Like FaceDetectorYN: NMS on boxes truncated to integers, top_k best kept before suppression.
        # Nothing else drops overlapping boxes, although YuNet sometimes finds one face twice (a second box on the
        # top of a head). Measured on all shared media as the command detects them (`benchmarks/overlapping_boxes.py`:
        # 417 boxes, 21 overlapping pairs, each looked at): a real face half hidden behind another (Hamilton clip,
        # 7.5-8 s) overlaps as much as the two head duplicates (facenet-pytorch clip, 2.5-3 s): intersection over
        # the smaller box 0.31-0.34 against 0.31-0.37, IoU 0.14-0.16 against 0.18-0.22. Any IoS threshold that drops
        # the duplicates drops that person; IoU >= 0.17 drops only them, 0.008 above the real face; a lower NMS
        # threshold here lets a neighbouring candidate of the duplicate through instead.
        rects, confidences = found[:, :4].astype(np.int32).tolist(), found[:, 4].tolist()
        kept = cv2.dnn.NMSBoxes(rects, confidences, score_threshold, nms_threshold, 1.0, top_k)
        found = found[np.asarray(kept, dtype=np.intp).reshape(-1)]
    return found.astype(np.float32)


def _yunet_session(path: Path) -> ort.InferenceSession:
    """A single-threaded onnxruntime session on YuNet with free input and output sizes."""
    session = inference_session(free_io_dims(path.read_bytes(), keep_outputs=_YUNET_OUTPUTS))
    missing = set(_YUNET_OUTPUTS) - {o.name for o in session.get_outputs()}
    if missing:
        raise ValueError(f"not a YuNet model: no outputs {sorted(missing)}")
    return session


class YuNetDetector:
    """YuNet on onnxruntime with FaceDetectorYN's pre/post-processing; one instance per worker process, safe to
    share between threads (onnxruntime sessions are; the input buffer is per thread)."""

    top_k = 5000

    def __init__(self, spec: DetectorSpec) -> None:
        self.spec = spec
        try:
            self._session = _yunet_session(spec.path)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise DetectorUnavailable(f"cannot load YuNet from {spec.path}: {exc}") from exc
        self._input_name = self._session.get_inputs()[0].name
        self._buffers = threading.local()

    def _input(self, small: np.ndarray) -> np.ndarray:
        """The padded NCHW float blob, in a buffer reused while the padded size stays.

        The padding must be zero: a smaller image in the same padded size would otherwise leave the previous
        image's pixels in it, and the faces found would depend on what was detected before.
        """
        height, width = small.shape[:2]
        pad_h, pad_w = -(-height // 32) * 32, -(-width // 32) * 32
        blob = getattr(self._buffers, "blob", None)
        if blob is None or blob.shape[2:] != (pad_h, pad_w):
            blob = self._buffers.blob = np.zeros((1, 3, pad_h, pad_w), dtype=np.float32)
        else:
            blob[:, :, height:, :] = 0
            blob[:, :, :height, width:] = 0
        for plane, channel in zip(blob[0], cv2.split(small)):
            np.copyto(plane[:height, :width], channel, casting="unsafe")  # uint8 -> float32, no scaling
        return blob

    def detect(self, image: np.ndarray) -> list[Detection]:
        small, back = _working_copy(image, self.spec.working_width)
        blob = self._input(small)
        outputs = self._session.run(_YUNET_OUTPUTS, {self._input_name: blob})
        spec = self.spec
        found = yunet_decode(outputs, blob.shape[3], spec.score_threshold, spec.nms_threshold, self.top_k)
        faces = [
            Detection(float(x) * back, float(y) * back, float(w) * back, float(h) * back, float(score))
            for x, y, w, h, score in found[:, :5]
        ]
        return _ordered([d for d in faces if min(d.w, d.h) >= spec.min_face])


class OpenCVYuNetDetector:
    """cv2.FaceDetectorYN itself: the reference for YuNetDetector, and the fallback when onnxruntime cannot run
    the file. Input size updated per frame size."""

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
    if spec.kind != "yunet":
        return HaarDetector(spec)
    try:
        return YuNetDetector(spec)
    except DetectorUnavailable as exc:
        log.debug("YuNet on onnxruntime unavailable (%s); using cv2.FaceDetectorYN", exc)
        return OpenCVYuNetDetector(spec)
