"""The one evaluation script: any emotion model, measured exactly as emotion-batch runs it.

    python scripts/evaluate_model.py [--model models/model.onnx] [--fer DIR] [--split PrivateTest]
                                     [--votes ferplus.csv] [--detector-model yunet.onnx] [--limit N] [--json F]

Reports, on one FER-2013 split (default PrivateTest: report on it, never tune on it; select on PublicTest):
- FER-2013 accuracy (original labels), macro-F1, per-class figures and the confusion matrix;
- FER+ majority accuracy and calibration against the raters (NLL, ECE), from ``--votes``;
- the robustness suite (training/generalisation.py): faces pasted into scenes and found by the real
  detector, and degraded crops; each condition and the mean;
- speed (median batch-1 run on one CPU thread, including any in-graph TTA) and file size, with the CPU model.

``--json`` also keeps every condition's outcome face by face, so two models' results can be compared with a
paired bootstrap: ``python scripts/compare_models.py A.json B.json``.

Images are read with OpenCV as greyscale and classified through emotion_batch's own Classifier (one
onnxruntime session, one thread), so the figures are the shipped runtime's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from emotion_batch.schema import EMOTIONS
from emotion_batch.vision.classification import Classifier, load_model_card
from emotion_batch.vision.detection import create_detector, resolve_detector
from emotion_train.artifacts import write_json_atomic
from emotion_train.generalisation import (
    EyeDetector,
    classify_crops,
    expected_calibration_error,
    ferplus_scores,
    load_split,
    outcomes,
    robustness,
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                flags = Path("/proc/cpuinfo").read_text()
                vnni = "avx512_vnni" in flags or "avx_vnni" in flags
                return f"{line.split(':', 1)[1].strip()} ({'with' if vnni else 'no'} VNNI)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--fer", type=Path, default=shared / "datasets" / "fer2013")
    parser.add_argument("--split", default="PrivateTest", choices=["PrivateTest", "PublicTest"])
    parser.add_argument("--votes", type=Path, default=None, help="FER+ votes CSV [default: FER/ferplus.csv]")
    parser.add_argument(
        "--detector-model",
        type=Path,
        default=None,
        help="YuNet ONNX for the in-frame conditions [default: as emotion-batch finds it, else "
        "the shared copy]; --no-in-frame skips them",
    )
    parser.add_argument("--no-in-frame", action="store_true", help="skip the detector conditions (fast)")
    parser.add_argument(
        "--align",
        action="store_true",
        help="experiment: turn each in-frame crop upright by YuNet's eye landmarks first",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="only every k-th image, k = N/limit (quick look)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-runs", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import cv2

    cv2.setNumThreads(1)
    card = load_model_card(args.model)
    classifier = Classifier(card)
    votes = args.votes or args.fer / "ferplus.csv"
    split = load_split(args.fer, args.split, votes)
    if args.limit and args.limit < len(split.targets):
        keep = np.arange(0, len(split.targets), len(split.targets) / args.limit).astype(int)
        split = type(split)(
            split.images[keep],
            split.targets[keep],
            [split.files[i] for i in keep],
            None
            if split.votes is None
            else type(split.votes)(
                split.votes.counts[keep], split.votes.other[keep], len(keep), split.votes.source
            ),
        )
    targets, labels = split.targets, list(EMOTIONS)
    probs = classify_crops(classifier, split.images)
    predicted, every = probs.argmax(axis=1), np.arange(len(targets))
    classes = per_class(targets, predicted, labels)
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    np.add.at(confusion, (targets, predicted), 1)

    detector = None
    if not args.no_in_frame:
        detector_path = args.detector_model
        if detector_path is None and not os.environ.get("EMOTION_BATCH_DETECTOR_MODEL"):
            local = shared / "detectors" / "face_detection_yunet_2023mar.onnx"
            detector_path = local if local.is_file() else None
        spec = resolve_detector("yunet", detector_path)
        detector = create_detector(spec)
    eyes = EyeDetector(spec.path) if args.align and detector is not None else None
    suite = robustness(classifier, detector, split, args.seed, eyes)

    x = split.images[..., None].astype(np.float32)
    for _ in range(20):
        classifier.predict(x[:1])
    timings = []
    for i in range(args.speed_runs):
        start = time.perf_counter()
        classifier.predict(x[i % len(x)][None])
        timings.append((time.perf_counter() - start) * 1000)

    result = {
        "model": str(card.path),
        "sha256": card.sha256,
        "split": f"FER-2013 {args.split} ({len(targets)} images)",
        # What makes the scenes and degradations the same for two models (scripts/compare_models.py checks it).
        "seed": args.seed,
        "limit": args.limit,
        "cpu": cpu_model(),
        "accuracy": float(np.mean(predicted == targets)),
        "macro_f1": float(np.mean([c["f1"] for c in classes.values()])),
        "ece_labels": expected_calibration_error(probs, targets),
        "per_class": classes,
        "confusion_matrix": confusion.tolist(),
        "ferplus": ferplus_scores(probs, split.votes) if split.votes is not None else None,
        "robustness": suite,
        # Face by face ('1' right, '0' wrong, '-' not scored), for scripts/compare_models.py.
        "outcomes": {
            "fer2013": outcomes(probs, targets, every, len(targets)),
            **(
                {"ferplus_majority": outcomes(probs, split.votes.majority(), every, len(targets))}
                if split.votes is not None
                else {}
            ),
        },
        "aligned_by_eyes": bool(eyes),
        "ms_per_face_batch1_1thread_median": statistics.median(timings),
        "ms_per_face_batch1_1thread_p90": float(np.percentile(timings, 90)),
        "model_mb": card.path.stat().st_size / 1e6,
    }
    print(
        f"{result['split']}: FER-2013 accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}, "
        f"ECE {result['ece_labels']:.3f}"
    )
    print("per-class recall: " + ", ".join(f"{k} {v['recall']:.3f}" for k, v in classes.items()))
    print("confusion (rows true, cols predicted, order " + ", ".join(labels) + "):")
    for row in confusion:
        print("  " + " ".join(f"{v:4d}" for v in row))
    if result["ferplus"]:
        fp = result["ferplus"]
        print(
            f"FER+ majority accuracy {fp['majority_accuracy']:.4f} on {fp['images']} images "
            f"({fp['left_out']} left out); NLL vs raters {fp['nll_vs_raters']:.3f}, ECE {fp['ece_majority']:.3f}"
        )
    print(
        "robustness: "
        + ", ".join(
            f"{k} {v['accuracy']:.3f}"
            + (f" (found {v['detection_rate']:.0%})" if "detection_rate" in v else "")
            for k, v in suite["conditions"].items()
        )
    )
    print(
        f"robustness mean accuracy {suite['mean_accuracy']:.4f} (FER-2013 labels)"
        + (
            f", {suite['mean_ferplus_accuracy']:.4f} (FER+ majority)"
            if "mean_ferplus_accuracy" in suite
            else ""
        )
    )
    print(
        "lighting (not in the mean): "
        + ", ".join(
            f"{k} {v['accuracy']:.3f} (FER+ {v['ferplus_accuracy']:.3f})"
            if "ferplus_accuracy" in v
            else f"{k} {v['accuracy']:.3f}"
            for k, v in suite["lighting"].items()
        )
    )
    print(
        f"speed: {result['ms_per_face_batch1_1thread_median']:.2f} ms/face median "
        f"(p90 {result['ms_per_face_batch1_1thread_p90']:.2f}), batch 1, 1 thread, on {result['cpu']}; "
        f"size {result['model_mb']:.1f} MB"
    )
    if args.json:
        write_json_atomic(args.json, result)


if __name__ == "__main__":
    main()
