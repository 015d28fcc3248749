"""People, not fragments: identities on generated videos with known truth and on hand-labelled shared clips."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from emotion_batch.media.sampling import FrameSampler, SamplingPlan
from emotion_batch.vision.detection import Detection, create_detector, resolve_detector
from emotion_batch.vision.shots import ShotDetector
from emotion_batch.vision.tracking import FaceTracker, confirmed_ids, min_cost_assignment

from .environment import REPO, shared_path
from .synthetic_tracks import box_of, identity_scores, load_sprites, nearest_truth, write_synthetic_video


@pytest.fixture(scope="module")
def detector(yunet_path: Path):
    return create_detector(resolve_detector("yunet", yunet_path))


def track(path: Path, detector, with_image: bool = True):
    tracker, shots, out = FaceTracker(), ShotDetector(), []
    for frame in FrameSampler(path, "video", SamplingPlan(fps=2.0)):
        faces = detector.detect(frame.image)
        shot = shots.update(frame.image, frame.timestamp_s)
        ids = tracker.update(faces, frame.timestamp_s, image=frame.image if with_image else None, shot=shot)
        out.append((frame, faces, ids, shot))
    return out


def test_min_cost_assignment_is_optimal() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        n, m = (int(v) for v in rng.integers(1, 6, 2))
        cost = rng.random((n, m))
        pairs = min_cost_assignment(cost)
        assert len(pairs) == min(n, m)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        best = min(
            sum(cost[i, j] for i, j in zip(rows, cols))
            for rows in itertools.combinations(range(n), min(n, m))
            for cols in itertools.permutations(range(m), min(n, m))
        )
        assert abs(sum(cost[i, j] for i, j in pairs) - best) < 1e-9


def test_a_new_shot_ends_every_track() -> None:
    face = Detection(100, 100, 60, 72, 0.9)
    tracker = FaceTracker()
    assert tracker.update([face], 0.0, shot=0) == [0]
    assert tracker.update([face], 0.5, shot=0) == [0]
    assert tracker.update([face], 1.0, shot=1) == [1]  # same place, same size: a new person after a cut
    assert tracker.update([face], 1.5, shot=1) == [1]


def test_synthetic_set_identities(detector, tmp_path: Path) -> None:
    """Crossings, occlusion, growth, exit and return, a cut with a stand-in: IDF1 >= 0.9, nothing across the cut."""
    sprites = load_sprites(shared_path("media", "photos"), detector)
    video = tmp_path / "synthetic.mp4"
    truth = write_synthetic_video(video, sprites)
    tracked = track(video, detector)
    observations = []
    for frame, faces, ids, _ in tracked:
        _, shot, faces_truth = nearest_truth(truth, frame.timestamp_s)
        observations.append((shot, faces_truth, [(i, box_of(f)) for i, f in zip(ids, faces)]))
    scores = identity_scores(observations)
    assert scores.idf1 >= 0.9, scores.line()
    assert scores.cross_shot_ids == 0 and scores.merges == 0, scores.line()
    assert scores.short_ids <= 1, scores.line()
    shots = {shot for *_, shot in tracked}
    assert shots == {0, 1}
    # Every id lives in one shot only, in the tracker's own shot numbering too.
    by_id: dict[int, set[int]] = {}
    for _, _, ids, shot in tracked:
        for i in ids:
            by_id.setdefault(i, set()).add(shot)
    assert all(len(s) == 1 for s in by_id.values())


def labelled(name: str, detector):
    truth = json.loads((REPO / "benchmarks" / "tracking_truth" / f"{name}.json").read_text())
    tracked = track(shared_path("media", "videos", truth["video"]), detector)
    by_index = {f["index"]: f for f in truth["frames"]}
    starts = truth["shots_start_frames"]
    observations = []
    for frame, faces, ids, _ in tracked:
        faces_truth = [(f["id"], f["box"]) for f in by_index[frame.index]["faces"]]
        shot = sum(1 for s in starts if s <= frame.index) - 1
        observations.append((shot, faces_truth, [(i, box_of(f)) for i, f in zip(ids, faces)]))
    return tracked, identity_scores(observations, min_iou=0.5)


def test_hamilton_no_identity_across_cuts(detector) -> None:
    tracked, scores = labelled("facerec_short_hamilton_clip", detector)
    assert scores.cross_shot_ids == 0 and scores.merges == 0, scores.line()
    assert scores.idf1 >= 0.95, scores.line()
    assert len({shot for *_, shot in tracked}) == 4


def test_facenet_crowd_keeps_people(detector) -> None:
    """11 people (two seen once, one back after 3 s hidden) plus one duplicate box: was 14 ids, IDF1 0.78. In the
    rows, where a face seen in one sample has no id, at most 10 ids (issue 16; 9 today)."""
    tracked, scores = labelled("facenetpytorch_video", detector)
    assert scores.idf1 >= 0.9, scores.line()
    assert scores.id_switches <= 2, scores.line()
    all_ids = [i for _, _, ids, _ in tracked for i in ids]
    assert len(set(all_ids)) <= 12, scores.line()
    final = confirmed_ids(all_ids)
    assert len({i for i in final.values() if i is not None}) <= 10, final
    assert sorted(i for i in final.values() if i is not None) == list(
        range(len(set(final.values()) - {None}))
    )
