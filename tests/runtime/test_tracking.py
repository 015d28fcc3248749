"""Tracking: stable ids for a moving face (synthetic boxes and the generated video), and time smoothing."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_batch.media.sampling import FrameSampler, SamplingPlan
from emotion_batch.vision.detection import Detection, create_detector, resolve_detector
from emotion_batch.vision.tracking import FaceTracker, smooth


def box(cx: float, cy: float, w: float = 60.0) -> Detection:
    return Detection(cx - w / 2, cy - w * 0.6, w, w * 1.2, 0.9)


def test_two_faces_moving_fast_keep_their_ids() -> None:
    """At 2 samples/s a face moves ~0.8 face widths between samples: boxes barely overlap."""
    tracker = FaceTracker()
    ids = [tracker.update([box(100 + 50 * k, 200), box(500 - 45 * k, 150)], k * 0.5) for k in range(6)]
    assert ids == [[0, 1]] * 6


def test_face_order_does_not_matter() -> None:
    tracker = FaceTracker()
    assert tracker.update([box(100, 100), box(400, 100)], 0.0) == [0, 1]
    assert tracker.update([box(405, 100), box(102, 100)], 0.5) == [1, 0]


def test_brief_absence_keeps_the_id_long_absence_does_not() -> None:
    tracker = FaceTracker()
    assert tracker.update([box(100, 100)], 0.0) == [0]
    assert tracker.update([], 0.5) == []
    assert tracker.update([box(110, 100)], 1.0) == [0]  # missed one sample: same person
    for t in (1.5, 2.0, 2.5, 3.0):
        tracker.update([], t)
    assert tracker.update([box(110, 100)], 3.5) == [1]  # gone for 2.5 s: a new track
    assert tracker.tracks_started == 2


def test_a_new_face_far_away_gets_a_new_id_and_ids_are_never_reused() -> None:
    tracker = FaceTracker()
    assert tracker.update([box(100, 100)], 0.0) == [0]
    assert tracker.update([box(100, 100), box(600, 300)], 0.5) == [0, 1]
    assert tracker.update([box(600, 300)], 1.0) == [1]
    assert tracker.update([box(100, 100, w=200)], 1.5) == [2]  # a much bigger face is not track 0


def test_moving_face_video_has_one_stable_track(moving_face_video, yunet_path) -> None:
    detector = create_detector(resolve_detector("yunet", yunet_path))
    for fps in (2.0, 10.0):
        tracker = FaceTracker()
        xs, ids = [], []
        for frame in FrameSampler(moving_face_video.path, "video", SamplingPlan(fps=fps)):
            faces = detector.detect(frame.image)
            assert len(faces) == 1, f"frame {frame.index}: {faces}"
            ids += tracker.update(faces, frame.timestamp_s)
            xs.append(faces[0].x)
        assert set(ids) == {0}
        assert len(ids) == round(4 * fps)
        assert np.all(np.diff(xs) > 0), "the face moves right in every sample"


def test_smoothing_is_a_centred_time_window() -> None:
    t = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 5.0])
    v = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(smooth(t, v, 1.0), [0.5, 1 / 3, 2 / 3, 1 / 3, 0.5, 1.0])
    np.testing.assert_allclose(smooth(t, np.ones((6, 7)), 3.0), np.ones((6, 7)))
    np.testing.assert_allclose(smooth(t, v, 0.0), v)


@pytest.mark.parametrize("window", [0.5, 1.0, 4.0])
def test_smoothing_keeps_probabilities_summing_to_one(window: float) -> None:
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 10, 50))
    p = rng.dirichlet(np.ones(7), 50)
    np.testing.assert_allclose(smooth(t, p, window).sum(axis=1), 1.0)
