"""Measure an emotion model exactly as emotion-batch runs it: accuracy on FER-2013, speed per face, file size.

    python scripts/evaluate_model.py [--model models/model.onnx] [--fer DIR] [--split PrivateTest]

Images are read with OpenCV as greyscale, resized to the card's input size and classified through
emotion_batch's own Classifier (one onnxruntime session, one thread), so the figures are the shipped
runtime's. Speed is the median of batch-1 runs on one CPU thread, including any in-graph flip TTA.
The default split is PrivateTest: report on it, never tune on it (select on PublicTest).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from emotion_batch.classification import Classifier, load_model_card
from emotion_batch.schema import EMOTIONS


def load_split(fer: Path, split: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    images, targets = [], []
    for index, label in enumerate(EMOTIONS):
        for path in sorted((fer / "test" / label).glob(f"{split}_*")):
            grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if grey.shape[:2] != size[::-1]:
                shrinking = grey.shape[0] > size[1]
                grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
            images.append(grey)
            targets.append(index)
    if not images:
        raise SystemExit(f"no {split}_* images under {fer / 'test'}")
    return np.stack(images)[..., None].astype(np.float32), np.asarray(targets), list(EMOTIONS)


def per_class(targets: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict:
    out = {}
    for i, label in enumerate(labels):
        tp = int(np.sum((predicted == i) & (targets == i)))
        support, chosen = int(np.sum(targets == i)), int(np.sum(predicted == i))
        precision = tp / chosen if chosen else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def main() -> None:
    shared = Path(os.environ.get("EMOTION_BATCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--fer", type=Path, default=shared / "datasets" / "fer2013")
    parser.add_argument("--split", default="PrivateTest", choices=["PrivateTest", "PublicTest"])
    parser.add_argument("--speed-runs", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    cv2.setNumThreads(1)
    card = load_model_card(args.model)
    classifier = Classifier(card)
    x, targets, labels = load_split(args.fer, args.split, (card.width, card.height))
    probs = np.concatenate([classifier.predict(x[i : i + 256]) for i in range(0, len(x), 256)])
    predicted = probs.argmax(axis=1)
    classes = per_class(targets, predicted, labels)
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(confusion, (targets, predicted), 1)

    one = x[:1]
    for _ in range(20):
        classifier.predict(one)
    timings = []
    for i in range(args.speed_runs):
        start = time.perf_counter()
        classifier.predict(x[i % len(x)][None])
        timings.append((time.perf_counter() - start) * 1000)

    result = {
        "model": str(card.path),
        "sha256": card.sha256,
        "split": f"FER-2013 {args.split} ({len(targets)} images)",
        "accuracy": float(np.mean(predicted == targets)),
        "macro_f1": float(np.mean([c["f1"] for c in classes.values()])),
        "per_class": classes,
        "confusion_matrix": confusion.tolist(),
        "ms_per_face_batch1_1thread_median": statistics.median(timings),
        "ms_per_face_batch1_1thread_p90": float(np.percentile(timings, 90)),
        "model_mb": card.path.stat().st_size / 1e6,
    }
    print(f"{result['split']}: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}")
    print("per-class recall: " + ", ".join(f"{k} {v['recall']:.3f}" for k, v in classes.items()))
    print("confusion (rows true, cols predicted, order " + ", ".join(labels) + "):")
    for row in confusion:
        print("  " + " ".join(f"{v:4d}" for v in row))
    print(f"speed: {result['ms_per_face_batch1_1thread_median']:.2f} ms/face median "
          f"(p90 {result['ms_per_face_batch1_1thread_p90']:.2f}), batch 1, 1 thread; "
          f"size {result['model_mb']:.1f} MB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
