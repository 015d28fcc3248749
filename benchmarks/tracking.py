#!/usr/bin/env python
"""Tracking quality and cost: identity metrics on the synthetic set and two hand-labelled shared clips.

For each video the frames are sampled as the command samples them (2/s by default), YuNet finds the faces, the
shot detector numbers the shots and the tracker gives ids; the ids are scored against the truth:

* the synthetic set (`tests/runtime/synthetic_tracks.py`): real faces from the shared photos pasted on generated
  backgrounds, with known identities per frame (crossings, occlusion, growth, exit and return, a hard cut);
* `benchmarks/tracking_truth/*.json`: the YuNet boxes of the 2/s samples of two shared clips, each assigned to a
  person by eye (null = not scored: a duplicate box, an ambiguous blur), with the frames where shots start.

Reported: IDF1 (IDP, IDR), ID switches, fragments (extra ids per person), merges (extra people per id), ids seen
in more than one shot (must be 0), ids given, ids with at most 2 samples. The tracker runs with appearance (the
frame given) and, for comparison, on motion alone (the frame not given) and in the previous greedy version when
`--baseline REV` names a git revision of emotion_batch/vision/tracking.py. Ids are those of the rows: a face
seen in one sample gets none (`confirmed_ids`, as the command does; such a face counts as missed), except in
"appearance, tracker ids" (before that step) and the baseline. For the labelled clips, "ids in the rows" counts
every id the command would write, those on unscored boxes (duplicates) included.

Cost: the time of the tracker's updates (appearance included) and of the shot detector, as a fraction of the
pipeline time of the same frames (decode + sample, detect, classify with the bundled model when it is there,
track, shots), one thread; and what feeding the shot detector every decoded frame would add (converting every
frame to BGR, PyAV not skipping frames). `--shots` prints the shot detector's distances on all shared videos.

Usage:
    python benchmarks/tracking.py                # synthetic set + the two labelled clips + cost
    python benchmarks/tracking.py --shots        # also: histogram distances within shots and across cuts
    python benchmarks/tracking.py --baseline 2e3c963
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emotion_batch.media.decoding import open_reader  # noqa: E402
from emotion_batch.media.sampling import FrameSampler, SamplingPlan  # noqa: E402
from emotion_batch.vision.detection import create_detector, resolve_detector  # noqa: E402
from emotion_batch.vision.shots import ShotDetector, frame_signature, signature_distance  # noqa: E402
from emotion_batch.vision.tracking import FaceTracker, confirmed_ids  # noqa: E402
from tests.runtime.synthetic_tracks import (  # noqa: E402
    box_of,
    identity_scores,
    load_sprites,
    nearest_truth,
    write_synthetic_video,
)

SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", REPO.parent / "shared"))
TRUTH = REPO / "benchmarks" / "tracking_truth"


def load_tracker_class(rev: str | None):
    if not rev:
        return None
    source = subprocess.run(
        ["git", "show", f"{rev}:emotion_batch/vision/tracking.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "emotion_batch_vision_tracking_baseline.py"
    path.write_text(source.replace("from .detection import", "from emotion_batch.vision.detection import"))
    spec = importlib.util.spec_from_file_location("tracking_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tracking_baseline"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.FaceTracker


def sampled(path: Path, detector, fps: float):
    """(frame, faces) of the sampled frames, detected once and reused by every tracker variant."""
    return [
        (frame, detector.detect(frame.image)) for frame in FrameSampler(path, "video", SamplingPlan(fps=fps))
    ]


#: Tracker variants: "appearance" and "motion" give the rows' ids (after `confirmed_ids`), the others the
#: tracker's own.
MODES = ("appearance", "motion", "appearance, tracker ids")


def run_tracker(frames, mode: str, baseline=None):
    """Track ids per frame (None: no id), and the shot ids, for a mode of MODES or 'baseline'."""
    shots = ShotDetector()
    tracker = baseline() if mode == "baseline" else FaceTracker()
    out = []
    for frame, faces in frames:
        shot = shots.update(frame.image, frame.timestamp_s)
        if mode == "motion":
            ids = tracker.update(faces, frame.timestamp_s, shot=shot)
        elif mode == "baseline":
            ids = tracker.update(faces, frame.timestamp_s)
        else:
            ids = tracker.update(faces, frame.timestamp_s, image=frame.image, shot=shot)
        out.append((frame, faces, ids, shot))
    if mode in ("appearance", "motion"):
        final = confirmed_ids(i for _, _, ids, _ in out for i in ids)
        out = [(frame, faces, [final[i] for i in ids], shot) for frame, faces, ids, shot in out]
    return out, shots


def hypotheses(faces, ids) -> list:
    """The (id, box) of the faces that have an id: one without is not output as a person, so not scored."""
    return [(i, box_of(f)) for i, f in zip(ids, faces) if i is not None]


def synthetic(detector, fps: float, modes, baseline) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "synthetic.mp4"
        truth = write_synthetic_video(video, load_sprites(SHARED / "media" / "photos", detector))
        frames = sampled(video, detector, fps)
    results = {}
    for mode in modes:
        tracked, shots = run_tracker(frames, mode, baseline)
        observations = []
        for frame, faces, ids, _ in tracked:
            _, truth_shot, faces_truth = nearest_truth(truth, frame.timestamp_s)
            observations.append((truth_shot, faces_truth, hypotheses(faces, ids)))
        results[mode] = identity_scores(observations)
        cut_times = [k / truth.fps for k in truth.cut_frames]
        results[mode + " cuts"] = f"found at {[round(c, 2) for c in shots.cuts_s]} s, true {cut_times} s"
    return results


def labelled(detector, truth_file: Path, modes, baseline) -> dict:
    truth = json.loads(truth_file.read_text())
    frames = sampled(SHARED / "media" / "videos" / truth["video"], detector, truth["sampling_fps"])
    by_index = {f["index"]: f for f in truth["frames"]}
    starts = truth["shots_start_frames"]
    results = {}
    for mode in modes:
        tracked, shots = run_tracker(frames, mode, baseline)
        observations = []
        for frame, faces, ids, _ in tracked:
            entry = by_index.get(frame.index, {"faces": []})
            truth_shot = sum(1 for s in starts if s <= frame.index) - 1
            faces_truth = [(f["id"] and f"{f['id']}", f["box"]) for f in entry["faces"]]
            observations.append((truth_shot, faces_truth, hypotheses(faces, ids)))
        results[mode] = identity_scores(observations, min_iou=0.5)
        given = {i for _, _, ids, _ in tracked for i in ids if i is not None}
        without = sum(1 for _, _, ids, _ in tracked for i in ids if i is None)
        results[mode + " rows"] = f"ids in the rows {len(given)}, faces without an id {without}"
        found = [round(c, 2) for c in shots.cuts_s]
        results[mode + " cuts"] = f"found at {found} s; shots start at frames {starts[1:]}"
    return results


def cost(detector, videos: list[Path], fps: float) -> str:
    """Tracker and shot-detector time as a share of the single-threaded pipeline time of the same frames."""
    try:
        from emotion_batch.vision.classification import Classifier, load_model_card

        classifier = Classifier(load_model_card())
    except Exception as exc:  # noqa: BLE001 - the cost is then against a pipeline without classification
        print(f"  (no classifier: {exc}; pipeline time leaves classification out)")
        classifier = None
    spent = {"sample": 0.0, "detect": 0.0, "classify": 0.0, "track": 0.0, "shots": 0.0}
    frames = 0
    for video in videos:
        tracker, shots = FaceTracker(), ShotDetector()
        given: list[int] = []
        t = time.perf_counter()
        for frame in FrameSampler(video, "video", SamplingPlan(fps=fps), prefetch=0):
            t1 = time.perf_counter()
            faces = detector.detect(frame.image)
            t2 = time.perf_counter()
            if classifier is not None and faces:
                classifier.classify(frame.image, faces)
            t3 = time.perf_counter()
            shot = shots.update(frame.image, frame.timestamp_s)
            t4 = time.perf_counter()
            given += tracker.update(faces, frame.timestamp_s, image=frame.image, shot=shot)
            t5 = time.perf_counter()
            spent["sample"] += t1 - t
            spent["detect"] += t2 - t1
            spent["classify"] += t3 - t2
            spent["shots"] += t4 - t3
            spent["track"] += t5 - t4
            frames += 1
            t = time.perf_counter()
        spent["sample"] += time.perf_counter() - t  # the sampler's last call: the end of the file
        t = time.perf_counter()
        final = confirmed_ids(given)  # the rows' ids, once the file is tracked
        _ = [final[i] for i in given]
        spent["track"] += time.perf_counter() - t
    total = sum(spent.values())
    lines = [
        f"  {frames} sampled frames of {len(videos)} videos, pipeline {total:.2f} s (one thread): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in spent.items()),
        f"  tracking {100 * spent['track'] / total:.2f}% + shot detection {100 * spent['shots'] / total:.2f}% "
        f"= {100 * (spent['track'] + spent['shots']) / total:.2f}% of pipeline time "
        f"({1e3 * spent['track'] / frames:.3f} + {1e3 * spent['shots'] / frames:.3f} ms per sampled frame)",
    ]
    # Feeding every decoded frame: every frame converted to BGR (and no frame skipped) + a signature each.
    every = 0.0
    count = 0
    for video in videos:
        reader = open_reader(video, can_skip=False)
        try:
            t = time.perf_counter()
            for picture in reader.pictures():
                image = picture.image()
                if image is not None:
                    frame_signature(image)
                    count += 1
            every += time.perf_counter() - t
        finally:
            reader.close()
    lines.append(
        f"  every decoded frame instead ({count} frames): decode all + convert all + signature {every:.2f} s, "
        f"against sampling {spent['sample']:.2f} s + shots {spent['shots']:.2f} s: "
        f"+{100 * (every - spent['sample'] - spent['shots']) / total:.1f}% of pipeline time"
    )
    return "\n".join(lines)


def shot_distances(fps: float) -> str:
    """Largest histogram distance within shots and smallest across cuts, every frame and at `fps`."""
    lines = []
    for video in sorted((SHARED / "media" / "videos").iterdir()):
        reader = open_reader(video, can_skip=False)
        try:
            sigs, times = [], []
            for k, picture in enumerate(reader.pictures()):
                image = picture.image()
                if image is not None:
                    sigs.append(frame_signature(image))
                    times.append(picture.timestamp_s if picture.timestamp_s is not None else k / 25)
        finally:
            reader.close()
        every = np.array([signature_distance(a, b) for a, b in zip(sigs, sigs[1:])])
        picks, k = [], 0
        for i, t in enumerate(times):
            if t + 1e-6 >= k / fps:
                picks.append(i)
                k = int(np.floor(t * fps + 1e-6)) + 1
        at_rate = np.array([signature_distance(sigs[a], sigs[b]) for a, b in zip(picks, picks[1:])])
        top = np.argsort(-every)[:4]
        lines.append(
            f"  {video.name}: every frame, largest {[(int(i) + 1, round(float(every[i]), 3)) for i in top]} "
            f"(frame, distance); at {fps}/s largest {sorted(np.round(at_rate, 3).tolist())[-4:]}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument(
        "--baseline", help="git revision whose tracking.py is scored too (greedy, motion only)"
    )
    parser.add_argument(
        "--shots", action="store_true", help="print shot-detector distances on the shared videos"
    )
    parser.add_argument("--no-cost", action="store_true")
    args = parser.parse_args()
    detector_file = SHARED / "detectors" / "face_detection_yunet_2023mar.onnx"
    if not detector_file.is_file():
        sys.exit(f"shared data not found: {detector_file} (set EMOTION_BATCH_SHARED)")
    detector = create_detector(resolve_detector("yunet", detector_file))
    baseline = load_tracker_class(args.baseline)
    modes = list(MODES) + (["baseline"] if baseline else [])

    print(f"synthetic set ({args.fps}/s):")
    for name, value in synthetic(detector, args.fps, modes, baseline).items():
        print(f"  {name}: {value.line() if hasattr(value, 'line') else value}")
    for truth_file in sorted(TRUTH.glob("*.json")):
        print(f"{truth_file.stem} ({args.fps}/s, hand-labelled):")
        for name, value in labelled(detector, truth_file, modes, baseline).items():
            print(f"  {name}: {value.line() if hasattr(value, 'line') else value}")
    if not args.no_cost:
        print("cost:")
        print(cost(detector, sorted((SHARED / "media" / "videos").glob("*.mp4")), args.fps))
    if args.shots:
        print("shot detector distances (half L1 of HSV histograms):")
        print(shot_distances(args.fps))


if __name__ == "__main__":
    main()
