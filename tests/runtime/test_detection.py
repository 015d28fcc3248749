"""Face detection: YuNet on real photos, full-resolution boxes, and choosing/locating the detector."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import cv2
import pytest

from emotion_batch.media.sampling import FrameSampler, SamplingPlan
from emotion_batch.vision.detection import (
    Detection,
    DetectorUnavailable,
    create_detector,
    haar_available,
    locate_yunet,
    resolve_detector,
)
from emotion_batch.vision.fetch import cached_yunet_path

from .environment import shared_path
from .media_factory import astronaut_bgr, no_face_bgr

# Faces YuNet finds at 640 px working width (score 0.6, 20 px minimum); checked by eye.
PHOTO_FACES = [
    ("deepface_couple.jpg", 2),
    ("deepface_img1.jpg", 1),
    ("deepface_img11.jpg", 1),
    ("deepface_img13.jpg", 1),
    ("deepface_img3.jpg", 1),
    ("deepface_selfie-many-people.jpg", 6),
    ("facenetpytorch_kate_siegel.jpg", 1),
    ("facenetpytorch_multiface.jpg", 6),
    ("facenetpytorch_paul_rudd.jpg", 1),
    ("facerec_biden.jpg", 1),
    ("facerec_kit_with_rose.jpg", 2),
    ("facerec_lin-manuel-miranda.png", 1),
    ("facerec_obama-720p.jpg", 1),
    ("facerec_obama_and_biden.jpg", 3),
    ("facerec_obama_partial_face.jpg", 1),
    ("facerec_two_people.jpg", 2),
    ("fer_justin.jpg", 1),
    ("fer_no-faces_NEGATIVE.jpg", 0),
    ("oarriaga_test_image.jpg", 6),
    ("pyfeat_BWPictureHuman.jpg", 1),
    ("pyfeat_multi_face.jpg", 5),
    ("pyfeat_single_face.jpg", 1),
]


@pytest.fixture(scope="module")
def yunet(yunet_path: Path):
    return create_detector(resolve_detector("yunet", yunet_path, working_width=640))


@pytest.mark.parametrize(("name", "faces"), PHOTO_FACES)
def test_yunet_counts_faces_in_real_photos(yunet, name: str, faces: int) -> None:
    image = cv2.imread(str(shared_path("media", "photos", name)))
    found = yunet.detect(image)
    assert len(found) == faces
    height, width = image.shape[:2]
    for face in found:  # full-resolution coordinates, inside (or at the edge of) the photo
        assert -0.2 * face.w <= face.x and face.x + face.w <= width + 0.2 * face.w
        assert -0.2 * face.h <= face.y and face.y + face.h <= height + 0.2 * face.h
        assert 0.6 <= face.score <= 1.0


def test_faces_are_ordered_left_to_right(yunet) -> None:
    image = cv2.imread(str(shared_path("media", "photos", "facenetpytorch_multiface.jpg")))
    xs = [f.x for f in yunet.detect(image)]
    assert xs == sorted(xs)


@pytest.mark.parametrize("upscale", [1, 2, 4])
def test_boxes_are_mapped_back_to_full_resolution(yunet, upscale: int) -> None:
    """A 2048 px frame is detected at the working width; the box must land on the face at full resolution."""
    image = astronaut_bgr()
    big = cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    (face,) = yunet.detect(big)
    # The astronaut's face, measured on the 512 px original.
    assert face.x / upscale == pytest.approx(178, abs=6)
    assert face.y / upscale == pytest.approx(62, abs=6)
    assert face.w / upscale == pytest.approx(89, abs=6)
    assert face.h / upscale == pytest.approx(113, abs=8)


def test_no_face_photo(yunet) -> None:
    assert yunet.detect(no_face_bgr()) == []


@pytest.mark.parametrize(("min_face", "found"), [(20, 1), (80, 1), (120, 0)])
def test_minimum_face_size_is_in_full_resolution_pixels(yunet_path: Path, min_face: int, found: int) -> None:
    detector = create_detector(resolve_detector("yunet", yunet_path, min_face=min_face))
    assert len(detector.detect(astronaut_bgr())) == found  # the face is ~89 x 113 px


def test_score_threshold(yunet_path: Path) -> None:
    image = cv2.imread(str(shared_path("media", "photos", "deepface_selfie-many-people.jpg")))
    at = functools.partial(resolve_detector, "yunet", yunet_path, working_width=640)
    loose = create_detector(at(score_threshold=0.3)).detect(image)
    strict = create_detector(at(score_threshold=0.9)).detect(image)
    assert len(loose) > 6 > len(strict) > 0


def _iou(a: Detection, box: tuple[int, int, int, int]) -> float:
    x, y, w, h = box
    ix = max(0.0, min(a.x + a.w, x + w) - max(a.x, x))
    iy = max(0.0, min(a.y + a.h, y + h) - max(a.y, y))
    return ix * iy / (a.w * a.h + w * h - ix * iy)


#: Two real faces whose boxes overlap, in the shared videos' 2/s samples, checked by eye (`python
#: benchmarks/overlapping_boxes.py --crops DIR`): (video, frame, the two boxes). The first two overlap as much as
#: YuNet's duplicate boxes on a head do (intersection over the smaller box 0.34 and 0.31, IoU 0.16 and 0.14), which
#: is why no overlap rule beyond NMS drops duplicates.
OVERLAPPING_PEOPLE = [
    (
        "facerec_short_hamilton_clip.mp4",
        240,
        (25, 24, 52, 73),
        (48, 53, 67, 83),
    ),  # a face behind a laughing man
    ("facerec_short_hamilton_clip.mp4", 225, (26, 23, 51, 73), (45, 60, 65, 83)),
    ("petercunha_dinner.mp4", 200, (103, 271, 56, 89), (132, 231, 62, 81)),  # heads together, IoS 0.22
    (
        "facerec_short_hamilton_clip.mp4",
        240,
        (321, 39, 69, 106),
        (387, 81, 65, 104),
    ),  # side by side, IoS 0.02
]


@pytest.mark.parametrize(("video", "index", "first", "second"), OVERLAPPING_PEOPLE)
def test_overlapping_real_faces_are_both_kept(
    yunet_path: Path, video: str, index: int, first, second
) -> None:
    """Detected as the command detects video frames (512 px): both people are found, neither box is dropped."""
    detector = create_detector(resolve_detector("yunet", yunet_path))
    frames = FrameSampler(shared_path("media", "videos", video), "video", SamplingPlan(fps=2.0), prefetch=0)
    (image,) = [f.image for f in frames if f.index == index]
    found = detector.detect(image)
    for box in (first, second):
        assert max(_iou(face, box) for face in found) >= 0.8, f"{box} not found in {found}"


# --- choosing and locating the detector --------------------------------------------------------------------------
@pytest.fixture
def no_detector_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("EMOTION_BATCH_DETECTOR_MODEL", raising=False)
    monkeypatch.setenv("EMOTION_BATCH_CACHE_DIR", str(tmp_path / "empty-cache"))
    return tmp_path


def test_explicit_path_wins_and_is_fingerprinted(yunet_path: Path, no_detector_anywhere: Path) -> None:
    spec = resolve_detector("auto", yunet_path)
    assert (spec.kind, spec.path, spec.name) == (
        "yunet",
        yunet_path,
        "yunet:face_detection_yunet_2023mar.onnx",
    )
    assert spec.sha256 == "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"


def test_environment_variable_then_cache(yunet_path: Path, no_detector_anywhere: Path, monkeypatch) -> None:
    assert locate_yunet() is None
    cache = cached_yunet_path()
    cache.parent.mkdir(parents=True)
    cache.write_bytes(yunet_path.read_bytes())
    assert locate_yunet() == cache
    monkeypatch.setenv("EMOTION_BATCH_DETECTOR_MODEL", str(yunet_path))
    assert locate_yunet() == yunet_path


@pytest.mark.parametrize("origin", ["argument", "environment"])
def test_named_but_missing_yunet_is_an_error(no_detector_anywhere: Path, monkeypatch, origin: str) -> None:
    missing = no_detector_anywhere / "missing.onnx"
    if origin == "environment":
        monkeypatch.setenv("EMOTION_BATCH_DETECTOR_MODEL", str(missing))
    with pytest.raises(DetectorUnavailable, match="YuNet model file not found: .*missing.onnx"):
        resolve_detector("auto", missing if origin == "argument" else None)


def test_yunet_requested_but_absent_says_how_to_fetch(no_detector_anywhere: Path) -> None:
    with pytest.raises(DetectorUnavailable, match="emotion-batch models fetch"):
        resolve_detector("yunet")


@pytest.mark.skipif(haar_available(), reason="this OpenCV still has Haar cascades (4.x)")
def test_without_haar_the_errors_are_clear(no_detector_anywhere: Path) -> None:
    with pytest.raises(
        DetectorUnavailable, match=r"Haar cascades are not available in OpenCV 5.*models fetch"
    ):
        resolve_detector("haar")
    with pytest.raises(DetectorUnavailable, match="no face detector available.*emotion-batch models fetch"):
        resolve_detector("auto")


@pytest.mark.skipif(
    not haar_available(), reason=f"OpenCV {cv2.__version__} has no Haar cascades (removed in 5.0)"
)
def test_auto_falls_back_to_haar_and_says_so(no_detector_anywhere: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="emotion_batch"):
        spec = resolve_detector("auto")
    assert spec.kind == "haar"
    assert "using the Haar cascade" in caplog.text
    assert len(create_detector(spec).detect(astronaut_bgr())) == 1


def test_unknown_detector_name() -> None:
    with pytest.raises(DetectorUnavailable, match="unknown detector 'mtcnn'"):
        resolve_detector("mtcnn")
