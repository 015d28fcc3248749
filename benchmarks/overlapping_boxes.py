#!/usr/bin/env python
"""Overlapping face boxes on all shared media, and what rules that drop one of two overlapping boxes would remove.

YuNet sometimes finds one face twice (a second, lower-scoring box on the top of a head) that its NMS (IoU 0.3)
keeps. This detects every shared video (sampled as the command samples, 2/s, 512 px) and photo (640 px) as the
command does, lists every pair of boxes that overlap, and for each candidate rule the boxes it would remove:

* intersection over the smaller box (IoS) at or above a threshold, the lower-scoring box dropped (greedy, best
  first, like NMS);
* IoU at or above a threshold after YuNet's NMS (the same, by IoU);
* a lower NMS IoU threshold inside YuNet's own post-processing (which can let a neighbouring candidate through).

A removed box in one of the hand-labelled clips (`benchmarks/tracking_truth`) is named by its person there (null =
a duplicate box, not a person); `--crops DIR` saves a picture of each pair (kept box green, the other red) to look at.

Usage:
    python benchmarks/overlapping_boxes.py
    python benchmarks/overlapping_boxes.py --crops /tmp/overlaps
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emotion_batch.defaults import PHOTO_MIN_WORKING_WIDTH  # noqa: E402
from emotion_batch.media.sampling import FrameSampler, SamplingPlan  # noqa: E402
from emotion_batch.vision.detection import Detection, create_detector, resolve_detector  # noqa: E402

SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", REPO.parent / "shared"))
TRUTH = REPO / "benchmarks" / "tracking_truth"


def overlap(a: Detection, b: Detection) -> tuple[float, float]:
    """(intersection over the smaller box, intersection over union)."""
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    return inter / min(a.w * a.h, b.w * b.h), inter / (a.w * a.h + b.w * b.h - inter)


def frames(fps: float):
    """(source, frame index, time, image, media type) of every sampled video frame and every photo."""
    for path in sorted((SHARED / "media" / "videos").iterdir()):
        for frame in FrameSampler(path, "video", SamplingPlan(fps=fps)):
            yield path.name, frame.index, frame.timestamp_s, frame.image, "video"
    for path in sorted((SHARED / "media" / "photos").iterdir()):
        for frame in FrameSampler(path, "image", SamplingPlan(fps=fps)):
            yield path.name, 0, 0.0, frame.image, "image"


def detect_all(spec, images) -> list[list[Detection]]:
    video = create_detector(spec)
    photo = create_detector(
        dataclasses.replace(spec, working_width=max(spec.working_width, PHOTO_MIN_WORKING_WIDTH))
    )
    return [(video if kind == "video" else photo).detect(image) for *_, image, kind in images]


def dropped(faces: list[Detection], measure: int, threshold: float) -> list[Detection]:
    """The boxes a rule drops: best first, a box overlapping a kept one by `threshold` or more goes."""
    kept: list[Detection] = []
    gone = []
    for face in sorted(faces, key=lambda d: -d.score):
        if any(overlap(face, k)[measure] >= threshold for k in kept):
            gone.append(face)
        else:
            kept.append(face)
    return gone


def truth_names() -> dict[tuple[str, int], list[tuple[str | None, list[float]]]]:
    names = {}
    for file in TRUTH.glob("*.json"):
        truth = json.loads(file.read_text())
        for frame in truth["frames"]:
            names[truth["video"], frame["index"]] = [(f["id"], f["box"]) for f in frame["faces"]]
    return names


def label(names, source: str, index: int, face: Detection) -> str:
    """The hand-labelled person of a box (null: a duplicate), or '?' outside the labelled clips."""
    if (source, index) not in names:
        return "?"
    for person, (x, y, w, h) in names[source, index]:
        if overlap(face, Detection(x, y, w, h, 0.0))[1] >= 0.5:
            return str(person) if person else "null"
    return "unlabelled"


def box(face: Detection) -> str:
    return f"[{face.x:.0f},{face.y:.0f},{face.w:.0f},{face.h:.0f}] {face.score:.3f}"


def save_pair(folder: Path, name: str, image, better: Detection, worse: Detection) -> None:
    picture = image.copy()
    for face, colour in ((better, (0, 220, 0)), (worse, (0, 0, 255))):
        corner = (round(face.x + face.w), round(face.y + face.h))
        cv2.rectangle(picture, (round(face.x), round(face.y)), corner, colour, 2)
    pad = 0.3 * max(better.w, better.h, worse.w, worse.h)
    x0, y0 = int(max(0, min(better.x, worse.x) - pad)), int(max(0, min(better.y, worse.y) - pad))
    x1 = int(min(image.shape[1], max(better.x + better.w, worse.x + worse.w) + pad))
    y1 = int(min(image.shape[0], max(better.y + better.h, worse.y + worse.h) + pad))
    cv2.imwrite(str(folder / f"{name}.png"), picture[y0:y1, x0:x1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--crops", type=Path, help="save a picture of each overlapping pair here")
    args = parser.parse_args()
    detector_file = SHARED / "detectors" / "face_detection_yunet_2023mar.onnx"
    if not detector_file.is_file():
        sys.exit(f"shared data not found: {detector_file} (set EMOTION_BATCH_SHARED)")
    spec = resolve_detector("yunet", detector_file)
    images = list(frames(args.fps))
    found = detect_all(spec, images)
    names = truth_names()
    if args.crops:
        args.crops.mkdir(parents=True, exist_ok=True)

    print(
        f"{len(images)} sampled frames and photos, {sum(map(len, found))} boxes (NMS IoU {spec.nms_threshold})"
    )
    print(
        "overlapping pairs (source, time, IoS, IoU, lower/higher area; higher-scoring box, lower-scoring box):"
    )
    pairs = []
    for (source, index, t, image, _), faces in zip(images, found):
        for i, a in enumerate(faces):
            for b in faces[i + 1 :]:
                ios, iou = overlap(a, b)
                if ios > 0:
                    better, worse = (a, b) if a.score >= b.score else (b, a)
                    pairs.append((ios, iou, source, index, t, better, worse))
                    if args.crops:
                        name = f"{source}_{index:05d}_{better.x:.0f}_{worse.x:.0f}"
                        save_pair(args.crops, name, image, better, worse)
    for ios, iou, source, index, t, better, worse in sorted(pairs, key=lambda p: -p[0]):
        area = worse.w * worse.h / (better.w * better.h)
        print(
            f"  {source} {t:.2f} s: IoS {ios:.3f}, IoU {iou:.3f}, area {area:.2f}; "
            f"{box(better)} ({label(names, source, index, better)}), "
            f"{box(worse)} ({label(names, source, index, worse)})"
        )

    def report(rule: str, removed) -> None:
        listed = ", ".join(f"{s} {t:.2f} s {box(f)} ({label(names, s, i, f)})" for s, i, t, f in removed)
        print(f"  {rule}: {len(removed)} removed{': ' + listed if removed else ''}")

    print("boxes each rule removes (person in the labelled clips; null = a duplicate box, ? = not labelled):")
    for threshold in (0.25, 0.3, 0.35, 0.4):
        removed = [
            (s, i, t, f) for (s, i, t, *_), faces in zip(images, found) for f in dropped(faces, 0, threshold)
        ]
        report(f"IoS >= {threshold}", removed)
    for threshold in (0.15, 0.17, 0.2, 0.25):
        removed = [
            (s, i, t, f) for (s, i, t, *_), faces in zip(images, found) for f in dropped(faces, 1, threshold)
        ]
        report(f"IoU >= {threshold} after NMS", removed)
    for threshold in (0.25, 0.2, 0.17, 0.15):
        other = detect_all(dataclasses.replace(spec, nms_threshold=threshold), images)
        removed, added = [], []
        for (s, i, t, *_), before, after in zip(images, found, other):
            removed += [(s, i, t, f) for f in before if f not in after]
            added += [(s, i, t, f) for f in after if f not in before]
        report(f"NMS IoU {threshold}", removed)
        if added:
            listed = ", ".join(f"{s} {t:.2f} s {box(f)}" for s, i, t, f in added)
            print(f"    and boxes it lets through instead: {listed}")


if __name__ == "__main__":
    main()
