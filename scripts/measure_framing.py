#!/usr/bin/env python
"""Measure how FER-2013 frames a face, and store it as the `crop` of a model card.

Why: the classifier only works in the wild if the runtime crops a detected face the way the training images
were cropped. FER-2013 images are tight 48x48 crops whose framing differs from a detector box, so we measure
the relation instead of guessing it:

1. take a deterministic sample of FER-2013 images (default: 3000 from the training split, all classes);
2. upscale each 48 px image (default 4x to 192 px, cubic) and pad it (default 25% per side, edge replication)
   so YuNet sees a whole face at a size it handles well;
3. run YuNet (the same detector and thresholds as the runtime) and keep the best face whose centre lies in
   the original image;
4. for each detected face with box (x, y, w, h), the training crop is the original image square (side S,
   centre C), so: scale = S / max(w, h), offset_x = (Cx - (x + w/2)) / w, offset_y = (Cy - (y + h/2)) / h;
5. correct for context: YuNet draws a slightly smaller box on a tight crop than on the same face seen in a
   whole photo (where the runtime runs it), which inflates the measured scale by ~6%. The script calibrates
   this on real photos (default ../shared/media/photos): it crops each detected face at known scales, takes
   the crop through the same 48 px -> upscale -> detect round trip, and inverts that curve at FER's median.
   `--no-calibration` keeps the raw medians;
6. report the detection rate, medians and interquartile ranges, and with --card write
   {"scale", "offset_x", "offset_y"} into the card's `crop` object (other keys untouched; written atomically).

The runtime then crops the square of side scale * max(w, h) centred at (x + w/2 + offset_x * w,
y + h/2 + offset_y * h), replicating edge pixels where it leaves the frame (emotion_batch.vision.classification).

Usage:
    python scripts/measure_framing.py                               # measure and print
    python scripts/measure_framing.py --card models/model.json      # ... and store it in the card
    python scripts/measure_framing.py --samples 500 --split test    # quicker, on the test split
    python scripts/measure_framing.py --no-calibration              # raw FER medians only

Data: $EMOTION_BATCH_SHARED/datasets/fer2013 (default ../shared beside the repository), or --fer DIR.
Detector: --detector-model, $EMOTION_BATCH_DETECTOR_MODEL, the user cache, or ../shared/detectors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from emotion_batch.defaults import DEFAULT_SCORE_THRESHOLD
from emotion_batch.files import atomic_file
from emotion_batch.vision.classification import CropGeometry, crop_face
from emotion_batch.vision.detection import Detection, YuNetDetector, locate_yunet, resolve_detector
from emotion_batch.vision.fetch import YUNET_FILENAME

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", REPO.parent / "shared"))
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
CALIBRATION_SCALES = (0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.4)


@dataclass(frozen=True)
class Framing:
    """The crop that reproduces one training image, relative to the detector box found on it."""

    scale: float
    offset_x: float
    offset_y: float


def sample_images(root: Path, split: str, count: int, seed: int) -> list[Path]:
    """A deterministic sample across all classes of one split."""
    files = sorted(p for p in (root / split).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no FER-2013 images found under {root / split}")
    random.Random(seed).shuffle(files)
    return files[:count]


def measure_one(
    detector: YuNetDetector, grey48: np.ndarray, upscale: int, pad_fraction: float
) -> Framing | None:
    """Framing of one training image, or None when YuNet finds no face centred in it."""
    side = grey48.shape[0] * upscale
    big = cv2.resize(grey48, (side, side), interpolation=cv2.INTER_CUBIC)
    pad = round(side * pad_fraction)
    padded = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    faces = detector.detect(cv2.cvtColor(padded, cv2.COLOR_GRAY2BGR))
    centre = pad + side / 2

    def centred(f: Detection) -> bool:
        return pad <= f.x + f.w / 2 <= pad + side and pad <= f.y + f.h / 2 <= pad + side

    candidates = [f for f in faces if centred(f)]
    if not candidates:
        return None
    face = max(candidates, key=lambda f: f.score)
    return Framing(
        scale=side / max(face.w, face.h),
        offset_x=(centre - (face.x + face.w / 2)) / face.w,
        offset_y=(centre - (face.y + face.h / 2)) / face.h,
    )


def calibration_curve(
    detector: YuNetDetector, photos: Path, upscale: int, pad_fraction: float, min_face: int = 60
) -> tuple[np.ndarray, np.ndarray]:
    """For each true crop scale, the median (scale, offset_x, offset_y) the FER procedure measures.

    Faces come from whole photos (full context, as at run time); each is cropped at a known scale with zero
    offset, reduced to 48 px like FER-2013 and measured exactly like a FER image.
    """
    faces = []
    for path in sorted(p for p in photos.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        image = cv2.imread(str(path))
        if image is None:
            continue
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        faces += [(grey, f) for f in detector.detect(image) if min(f.w, f.h) >= min_face]
    if len(faces) < 10:
        raise SystemExit(f"too few faces ({len(faces)}) in {photos} to calibrate; use --no-calibration")
    rows = []
    for scale in CALIBRATION_SCALES:
        found = []
        for grey, face in faces:
            crop = crop_face(grey, face, CropGeometry(scale, 0.0, 0.0))
            small = cv2.resize(crop, (48, 48), interpolation=cv2.INTER_AREA)
            if (m := measure_one(detector, small, upscale, pad_fraction)) is not None:
                found.append((m.scale, m.offset_x, m.offset_y))
        rows.append(np.median(np.array(found), axis=0))
    print(f"calibration: {len(faces)} faces from {photos}")
    return np.array(CALIBRATION_SCALES), np.array(rows)


def calibrated(measured: np.ndarray, scales: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Invert the calibration curve: the true scale whose measurement equals FER's, and the offset biases."""
    order = np.argsort(curve[:, 0])
    true_scale = float(np.interp(measured[0], curve[order, 0], scales[order]))
    bias_x = float(np.interp(true_scale, scales, curve[:, 1]))
    bias_y = float(np.interp(true_scale, scales, curve[:, 2]))
    return np.array([true_scale, measured[1] - bias_x, measured[2] - bias_y])


def write_crop(card_path: Path, crop: dict[str, float]) -> None:
    """Set card["crop"] and rewrite the card atomically, keeping every other key as it was."""
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["crop"] = crop
    with atomic_file(card_path, "w", encoding="utf-8") as fh:
        json.dump(card, fh, indent=2)
        fh.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--fer", type=Path, default=SHARED / "datasets" / "fer2013", help="FER-2013 root folder"
    )
    parser.add_argument("--split", default="train", help="subfolder to sample (train or test)")
    parser.add_argument("--samples", type=int, default=3000, help="number of images to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--upscale", type=int, default=4, help="upscale factor before detection (48 px -> 192 px)"
    )
    parser.add_argument(
        "--pad", type=float, default=0.25, help="padding added on each side, fraction of image"
    )
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD)
    parser.add_argument("--detector-model", type=Path, help="YuNet ONNX file")
    parser.add_argument("--card", type=Path, help="model.json to write the measured crop into")
    parser.add_argument(
        "--calibration-photos",
        type=Path,
        default=SHARED / "media" / "photos",
        help="real photos with faces, to correct the tight-crop bias of the measurement",
    )
    parser.add_argument("--no-calibration", action="store_true", help="write the raw FER medians")
    args = parser.parse_args(argv)

    yunet = args.detector_model or locate_yunet() or SHARED / "detectors" / YUNET_FILENAME
    spec = resolve_detector(
        "yunet", yunet, score_threshold=args.score_threshold, min_face=1, working_width=10_000
    )
    detector = YuNetDetector(spec)

    files = sample_images(args.fer, args.split, args.samples, args.seed)
    framings: list[Framing] = []
    for i, path in enumerate(files, 1):
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is not None:
            found = measure_one(detector, grey, args.upscale, args.pad)
            if found:
                framings.append(found)
        if i % 500 == 0:
            print(f"  {i}/{len(files)} images, {len(framings)} faces", file=sys.stderr)

    rate = len(framings) / len(files)
    print(
        f"FER-2013 {args.split}: {len(files)} images, YuNet found a centred face in {len(framings)} ({rate:.1%})"
    )
    if len(framings) < 50:
        print("too few faces to measure the framing reliably", file=sys.stderr)
        return 1
    table = np.array([[f.scale, f.offset_x, f.offset_y] for f in framings])
    medians = np.median(table, axis=0)
    q1, q3 = np.percentile(table, [25, 75], axis=0)
    for k, name in enumerate(("scale", "offset_x", "offset_y")):
        print(f"  {name:9s} median {medians[k]:+.4f}   interquartile range {q1[k]:+.4f} .. {q3[k]:+.4f}")
    if not args.no_calibration:
        scales, curve = calibration_curve(detector, args.calibration_photos, args.upscale, args.pad)
        for scale, row in zip(scales, curve):
            print(f"  true scale {scale:.2f} -> measured {row[0]:.4f} ({row[1]:+.4f}, {row[2]:+.4f})")
        medians = calibrated(medians, scales, curve)
        print(f"calibrated: scale {medians[0]:.4f}, offset ({medians[1]:+.4f}, {medians[2]:+.4f})")
    crop = {
        "scale": round(float(medians[0]), 4),
        "offset_x": round(float(medians[1]), 4),
        "offset_y": round(float(medians[2]), 4),
    }
    print("crop:", json.dumps(crop))
    if args.card:
        write_crop(args.card, crop)
        print(f"wrote crop into {args.card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
