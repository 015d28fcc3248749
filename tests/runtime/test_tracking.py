"""Tracking: stable ids for a moving face (synthetic boxes and the generated video), the rows' final ids (a face
seen in one sample has none), and time smoothing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from emotion_batch.analysis import Settings, process_file
from emotion_batch.media.sampling import FrameSampler, SamplingPlan
from emotion_batch.media.sources import Source
from emotion_batch.vision.classification import bundled_model_path, load_model_card
from emotion_batch.vision.detection import Detection, create_detector, resolve_detector
from emotion_batch.vision.tracking import FaceTracker, confirmed_ids, smooth

from .media_factory import write_passing_face_video


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


@pytest.mark.parametrize(
    ("ids", "min_samples", "expected"),
    [
        ([], 2, {}),
        ([0, 0, 1], 2, {0: 0, 1: None}),
        ([0, 1, 2, 1, 2], 2, {0: None, 1: 0, 2: 1}),  # the others renumbered 0..
        ([2, 1, 1, 2], 2, {2: 0, 1: 1}),  # in order of first appearance
        ([3, None, 5, 3, 7, 5], 2, {3: 0, 5: 1, 7: None}),  # a face already without an id is passed over
        ([0, 1, 1], 1, {0: 0, 1: 1}),
        ([0, 1, 1, 1, 0], 3, {0: None, 1: 0}),
    ],
)
def test_confirmed_ids(ids: list, min_samples: int, expected: dict) -> None:
    final = confirmed_ids(ids, min_samples)
    assert final == expected and list(final) == list(expected)


@pytest.fixture(scope="module")
def settings(yunet_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The command's defaults (2 samples/s, YuNet, the bundled model or the tiny one), annotating nowhere yet."""
    model = None if bundled_model_path().is_file() else request.getfixturevalue("tiny_model")
    return Settings(SamplingPlan(fps=2.0), resolve_detector("yunet", yunet_path), load_model_card(model))


#: Frames (25 fps) in which a second face stands beside the first, and the ids that face gets in the rows of the
#: samples it is in (frames 0, 13, 25, 38, ...): seen once, no id; seen twice, the second person.
PASSING = [((23, 28), [None]), ((20, 30), [None]), ((23, 41), [1, 1]), ((0, 100), [1] * 8)]


@pytest.mark.parametrize(("visible", "second_ids"), PASSING)
def test_a_face_seen_in_one_sample_has_no_track_id(
    settings: Settings, tmp_path: Path, visible: tuple[int, int], second_ids: list
) -> None:
    video = write_passing_face_video(tmp_path / "passing.mp4", visible)
    annotated = tmp_path / "annotated"
    result = process_file(
        Source(video.path, "passing.mp4", "video"), Settings(**{**vars(settings), "annotate_dir": annotated})
    )
    assert result.status == "ok", result.error
    rows = result.records
    assert len({r.frame_index for r in rows}) == 8  # 4 s at 2 samples/s: every sample keeps its rows
    assert [r.track_id for r in rows if r.face_index == 0] == [0] * 8, "the face on the left all along"
    assert sum(r.n_faces == 2 for r in rows) == 2 * len(second_ids)  # both faces side by side are found
    assert [r.track_id for r in rows if r.face_index == 1] == second_ids
    people = 1 + (second_ids[0] is not None)
    assert (result.summary["faces"], result.summary["tracks"]) == (8 + len(second_ids), people)
    assert set(result.thumbnails) == {(0, t) for t in range(people)}
    # The annotated frames are labelled with the final ids: each has its boxes drawn (green), none left plain.
    frames = sorted((annotated / "passing.mp4").glob("frame_*.jpg"))
    assert len(frames) == 8
    for frame in frames:
        image = cv2.imread(str(frame))
        green = (image[..., 1] > 180) & (image[..., 0] < 60) & (image[..., 2] < 60)
        assert green.sum() > 500, f"{frame.name} has no boxes drawn"


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
