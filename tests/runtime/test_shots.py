"""Shot detection: hard cuts found on real and generated videos, at the sampling rate and on every frame."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emotion_batch.media.decoding import open_reader
from emotion_batch.media.sampling import FrameSampler, SamplingPlan
from emotion_batch.vision.shots import ShotDetector, frame_signature, signature_distance

from .environment import shared_path
from .synthetic_tracks import _background


def shots_at(path: Path, fps: float) -> tuple[list[int], ShotDetector]:
    detector = ShotDetector()
    indices, shot = [], 0
    for frame in FrameSampler(path, "video", SamplingPlan(fps=fps)):
        if detector.update(frame.image, frame.timestamp_s) != shot:
            shot = detector.shot
            indices.append(frame.index)
    return indices, detector


def test_generated_cut_is_found_and_motion_is_not_a_cut(tmp_path: Path) -> None:
    """A bright square moving fast over one background, then another background: one cut, at the right frame."""
    path = tmp_path / "cut.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 360))
    for k in range(100):
        frame = _background(1 if k < 60 else 2).copy()
        x = (k * 23) % 560
        cv2.rectangle(frame, (x, 100), (x + 80, 200), (240, 240, 240), -1)
        writer.write(frame)
    writer.release()
    for fps in (2.0, 25.0):
        cuts, detector = shots_at(path, fps)
        assert len(cuts) == 1, (fps, cuts, detector.cuts_s)
        assert cuts[0] == (60 if fps == 25.0 else 63), cuts  # at 2/s: the first sample after it (2.52 s)


def test_hamilton_cuts_at_two_samples_per_second() -> None:
    """The clip's three hard cuts (frames 20, 82, 211, checked by eye) land on the first sample after each."""
    cuts, _ = shots_at(shared_path("media", "videos", "facerec_short_hamilton_clip.mp4"), 2.0)
    assert cuts == [30, 90, 225]


def test_hamilton_cuts_on_every_frame() -> None:
    reader = open_reader(shared_path("media", "videos", "facerec_short_hamilton_clip.mp4"), can_skip=False)
    detector, cuts = ShotDetector(), []
    try:
        for picture in reader.pictures():
            image = picture.image()
            if image is not None and detector.update(image, picture.timestamp_s) > len(cuts):
                cuts.append(picture.index)
    finally:
        reader.close()
    assert cuts == [20, 82, 211]


def test_single_shot_videos_have_no_cut() -> None:
    for name in ("facenetpytorch_video.mp4", "petercunha_dinner.mp4", "pyfeat_WolfgangLanger_Pexels.mp4"):
        cuts, detector = shots_at(shared_path("media", "videos", name), 2.0)
        assert cuts == [], (name, detector.cuts_s)


def test_signature_distance_bounds() -> None:
    a = frame_signature(np.full((90, 160, 3), (255, 0, 0), np.uint8))
    b = frame_signature(np.full((90, 160, 3), (0, 0, 255), np.uint8))
    assert signature_distance(a, a) == 0.0
    assert abs(signature_distance(a, b) - 1.0) < 1e-6
    grey = frame_signature(np.full((90, 160), 128, np.uint8))
    assert abs(grey.sum() - 1.0) < 1e-6
