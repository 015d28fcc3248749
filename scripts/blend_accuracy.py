#!/usr/bin/env python
"""Clean PublicTest accuracy (FER-2013 labels and FER+ majority) of exported models and of their pairwise
probability averages (weights 0.3 / 0.5 / 0.7): a quick look before building an ensemble.

    python scripts/blend_accuracy.py RUN_DIR RUN_DIR [...]

The robustness suite, speed and the rest: scripts/evaluate_model.py on the built ensemble.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from emotion_batch.vision.classification import Classifier, load_model_card
from emotion_train.generalisation import accuracy, classify_crops, ferplus_scores, load_split
from emotion_train.labels import Votes

SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def scores(probs: np.ndarray, targets: np.ndarray, votes: Votes) -> str:
    fer_plus = ferplus_scores(probs, votes)["majority_accuracy"]
    return f"FER-2013 {accuracy(probs, targets):.4f}  FER+ {fer_plus:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, nargs="+", help="folders with model.onnx and model.json")
    parser.add_argument("--fer2013", type=Path, default=SHARED / "datasets" / "fer2013")
    args = parser.parse_args()
    split = load_split(args.fer2013, "PublicTest", args.fer2013 / "ferplus.csv")
    if split.votes is None:
        raise SystemExit(f"{args.fer2013 / 'ferplus.csv'}: no FER+ votes there")
    crops = list(split.images)
    probs = {}
    for run in args.runs:
        probs[run] = classify_crops(Classifier(load_model_card(str(run / "model.onnx"))), crops)
        print(f"{run.name:28s} {scores(probs[run], split.targets, split.votes)}")
    for i, first in enumerate(args.runs):
        for second in args.runs[i + 1 :]:
            for w in (0.3, 0.5, 0.7):
                blend = w * probs[first] + (1 - w) * probs[second]
                print(
                    f"{w:.1f} {first.name} + {1 - w:.1f} {second.name}: "
                    f"{scores(blend, split.targets, split.votes)}"
                )


if __name__ == "__main__":
    main()
