"""YuNet on onnxruntime finds what cv2.FaceDetectorYN finds, at every working size, on real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from emotion_batch.vision import detection
from emotion_batch.vision.detection import (
    Detection,
    OpenCVYuNetDetector,
    YuNetDetector,
    create_detector,
    free_io_dims,
    resolve_detector,
)

from .environment import shared_path
from .media_factory import astronaut_bgr


def iou(a: Detection, b: Detection) -> float:
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1, y1 = min(a.x + a.w, b.x + b.w), min(a.y + a.h, b.y + b.h)
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a.w * a.h + b.w * b.h - inter)


def photos() -> list[Path]:
    return sorted(shared_path("media", "photos").iterdir())


def test_runtime_yunet_is_onnxruntime(yunet_path: Path) -> None:
    assert isinstance(create_detector(resolve_detector("yunet", yunet_path)), YuNetDetector)


def test_free_io_dims_makes_the_input_size_free_and_keeps_the_weights(yunet_path: Path) -> None:
    original = yunet_path.read_bytes()
    freed = free_io_dims(original)
    fixed = ort.InferenceSession(original, providers=["CPUExecutionProvider"])
    free = ort.InferenceSession(freed, providers=["CPUExecutionProvider"])
    assert fixed.get_inputs()[0].shape == [1, 3, 640, 640]
    assert all(isinstance(d, str) for d in free.get_inputs()[0].shape)
    assert len(freed) == pytest.approx(len(original), abs=200)  # only names replaced numbers
    blob = np.random.default_rng(0).uniform(0, 255, (1, 3, 640, 640)).astype(np.float32)
    for a, b in zip(fixed.run(None, {"input": blob}), free.run(None, {"input": blob})):
        np.testing.assert_array_equal(a, b)
    (cls_8,) = free.run(["cls_8"], {"input": blob[:, :, :192, :320]})
    assert cls_8.shape == (1, 24 * 40, 1)


def test_dropping_the_landmark_outputs_keeps_the_others_exact(yunet_path: Path) -> None:
    wanted = [f"{kind}_{stride}" for kind in ("cls", "obj", "bbox") for stride in (8, 16, 32)]
    full = ort.InferenceSession(free_io_dims(yunet_path.read_bytes()), providers=["CPUExecutionProvider"])
    pruned = ort.InferenceSession(
        free_io_dims(yunet_path.read_bytes(), keep_outputs=wanted), providers=["CPUExecutionProvider"]
    )
    assert [o.name for o in pruned.get_outputs()] == wanted
    assert {o.name for o in full.get_outputs()} == {*wanted, "kps_8", "kps_16", "kps_32"}
    blob = np.random.default_rng(1).uniform(0, 255, (1, 3, 288, 512)).astype(np.float32)
    for a, b in zip(full.run(wanted, {"input": blob}), pruned.run(wanted, {"input": blob})):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (300, 200, (300, 200)),
        (512, 288, (512, 288)),
        (700, 394, (512, 288)),
        (1024, 576, (512, 288)),
        (1537, 865, (512, 288)),
        (1920, 1080, (512, 288)),
        (3840, 2160, (512, 288)),
        (2049, 3001, (512, 750)),
    ],
)
def test_working_copy_size_and_factor_back(width: int, height: int, expected: tuple[int, int]) -> None:
    """Halving (with an odd last row or column left out) and then bilinear: the copy is the working width and
    the factor maps it back onto the frame to within one pixel."""
    image = np.random.default_rng(width).integers(0, 255, (height, width, 3), dtype=np.uint8)
    small, back = detection._working_copy(image, 512)
    assert (small.shape[1], small.shape[0]) == expected
    assert abs(small.shape[1] * back - width) <= back and abs(small.shape[0] * back - height) <= back + 1


def test_halving_averages_like_area_resize() -> None:
    """The 2x steps are exact area averages, so a wide frame is not aliased before the bilinear step."""
    image = np.random.default_rng(3).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    halved, back = detection._working_copy(image, 960)
    assert back == 2.0
    blocks = image.reshape(540, 2, 960, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(halved.astype(np.float64) - blocks).max() <= 1.0


@pytest.mark.parametrize("working_width", [640, 320])
def test_same_faces_as_cv2_face_detector_yn(yunet_path: Path, working_width: int) -> None:
    spec = resolve_detector("yunet", yunet_path, working_width=working_width)
    fast, reference = YuNetDetector(spec), OpenCVYuNetDetector(spec)
    total = 0
    for image in [cv2.imread(str(p)) for p in photos()] + [astronaut_bgr()]:
        got, want = fast.detect(image), reference.detect(image)
        assert len(got) == len(want)
        for a, b in zip(got, want):  # both are ordered left to right
            assert iou(a, b) > 0.99
            assert a.score == pytest.approx(b.score, abs=1e-3)
        total += len(want)
    assert total > 30


def test_falls_back_to_cv2_when_onnxruntime_cannot_run_the_file(yunet_path: Path, monkeypatch) -> None:
    def refuse(path: Path):
        raise ValueError("not a YuNet model: no outputs ['cls_8']")

    monkeypatch.setattr(detection, "_yunet_session", refuse)
    detector = create_detector(resolve_detector("yunet", yunet_path))
    assert isinstance(detector, OpenCVYuNetDetector)
    assert len(detector.detect(astronaut_bgr())) == 1


def test_one_detector_shared_by_threads(yunet_path: Path) -> None:
    """Several files analysed by threads of one process (e.g. a Dask worker) can share the detector."""
    from concurrent.futures import ThreadPoolExecutor

    detector = YuNetDetector(resolve_detector("yunet", yunet_path))
    images = [cv2.imread(str(p)) for p in photos()] * 3
    alone = [detector.detect(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(detector.detect, images)) == alone


def test_padding_does_not_remember_the_previous_image(yunet_path: Path) -> None:
    """Same padded size, different heights: the second frame's faces must not depend on the first's."""
    image = cv2.imread(str(shared_path("media", "photos", "facenetpytorch_multiface.jpg")))
    spec = resolve_detector("yunet", yunet_path, working_width=512)
    tall = cv2.resize(image, (512, 320))
    short = cv2.resize(image, (512, 300))[::-1].copy()  # same 320 px padded height, other content
    fresh = YuNetDetector(spec).detect(short)
    reused = YuNetDetector(spec)
    reused.detect(tall)
    assert reused.detect(short) == fresh
