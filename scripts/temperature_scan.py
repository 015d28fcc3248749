#!/usr/bin/env python
"""How a model's confidence would change under temperature scaling, on one FER-2013 split (PublicTest).

    python scripts/temperature_scan.py [--model models/model.onnx] [--temperatures 0.6 0.8 1 1.2]

Dividing the logits by T keeps every answer (the top class does not move) and changes only how sure the model
claims to be: T < 1 sharpens, T > 1 flattens. For each T it prints the NLL against the FER+ raters'
distributions, the ECE against their majority, and the NLL and ECE against the FER-2013 labels, so one sees
whether a temperature would mend the calibration or only trade one labeling's for the other's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from emotion_batch.vision.classification import Classifier, load_model_card
from emotion_train.generalisation import (
    classify_crops,
    expected_calibration_error,
    ferplus_scores,
    load_split,
)

SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the probabilities the same logits divided by T would give."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    scaled = np.exp(logits - logits.max(axis=1, keepdims=True))
    return scaled / scaled.sum(axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--fer", type=Path, default=SHARED / "datasets" / "fer2013")
    parser.add_argument("--split", default="PublicTest", choices=["PublicTest", "PrivateTest"])
    parser.add_argument(
        "--temperatures", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4]
    )
    args = parser.parse_args()
    split = load_split(args.fer, args.split, args.fer / "ferplus.csv")
    if split.votes is None:
        raise SystemExit(f"{args.fer / 'ferplus.csv'}: no FER+ votes there")
    probs = classify_crops(Classifier(load_model_card(args.model)), list(split.images))
    rows = np.arange(len(split.targets))
    print("T      NLL raters  ECE majority  NLL labels  ECE labels  mean confidence")
    for temperature in args.temperatures:
        scaled = with_temperature(probs, temperature)
        raters = ferplus_scores(scaled, split.votes)
        nll_labels = float(-np.mean(np.log(np.clip(scaled[rows, split.targets], 1e-12, 1.0))))
        print(
            f"{temperature:<6.2f} {raters['nll_vs_raters']:10.4f} {raters['ece_majority']:13.4f} "
            f"{nll_labels:11.4f} {expected_calibration_error(scaled, split.targets):11.4f} "
            f"{float(scaled.max(axis=1).mean()):16.3f}"
        )


if __name__ == "__main__":
    main()
