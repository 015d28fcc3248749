#!/usr/bin/env python
"""Can a per-class offset on a model's log-probabilities buy FER-2013 accuracy without losing FER+ agreement?

    python scripts/prior_offsets.py RUN_DIR [RUN_DIR ...] [--floors 0.78 0.785 0.79] [--repeats 3]

A constant added to each class's log-probability (a prior shift) costs nothing at run time, so it is the
cheapest way to move a trained model along the trade-off between the two labelings. For each FER+ floor this
fits the seven offsets that maximise FER-2013 accuracy while FER+ majority accuracy stays at or above the
floor (coordinate ascent over a grid), and reports:

- in-sample: fitted and scored on all of PublicTest (optimistic: seven parameters chosen on the same faces);
- held-out: fitted on one random half of PublicTest and scored on the other, both ways, ``--repeats`` times;
  the mean change against no offset on the same half. This is the figure to believe.

A model already on the frontier of what its scores can separate gains nothing held-out. Clean faces only:
scripts/evaluate_model.py gives the robustness suite. Selection data only: never point it at PrivateTest.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from emotion_batch.schema import EMOTIONS
from emotion_batch.vision.classification import Classifier, load_model_card
from emotion_train.generalisation import accuracy, classify_crops, load_split

SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GRID = np.linspace(-0.8, 0.8, 33)
PENALTY = 10.0  # per point of FER+ accuracy below the floor: large enough that the floor holds


def accuracies(
    log_probs: np.ndarray, offsets: np.ndarray, targets: np.ndarray, majority: np.ndarray
) -> tuple:
    """(FER-2013 accuracy, FER+ majority accuracy) of argmax(log_probs + offsets); no majority: not scored."""
    shifted, voted = log_probs + offsets, majority >= 0
    return accuracy(shifted, targets), accuracy(shifted[voted], majority[voted])


def fit_offsets(log_probs: np.ndarray, targets: np.ndarray, majority: np.ndarray, floor: float) -> np.ndarray:
    """Offsets maximising FER-2013 accuracy with FER+ accuracy at or above ``floor`` (4 sweeps over classes)."""

    def objective(offsets: np.ndarray) -> float:
        fer, fer_plus = accuracies(log_probs, offsets, targets, majority)
        return fer - PENALTY * max(0.0, floor - fer_plus)

    offsets = np.zeros(log_probs.shape[1])
    best = objective(offsets)
    for _ in range(4):
        for c in range(len(offsets)):
            for value in GRID:
                trial = offsets.copy()
                trial[c] = value
                if (score := objective(trial)) > best + 1e-9:
                    best, offsets = score, trial
    return offsets


def held_out_change(
    log_probs: np.ndarray,
    targets: np.ndarray,
    majority: np.ndarray,
    floor: float,
    repeats: int,
    seed: int = 0,
) -> tuple[float, float]:
    """Mean (FER-2013, FER+) change on the half the offsets were not fitted on, over 2 x ``repeats`` fits."""
    rng = np.random.default_rng(seed)
    changes = []
    for _ in range(repeats):
        order = rng.permutation(len(targets))
        halves = (order[: len(order) // 2], order[len(order) // 2 :])
        for fit_on, score_on in (halves, halves[::-1]):
            offsets = fit_offsets(log_probs[fit_on], targets[fit_on], majority[fit_on], floor)
            held_out = (log_probs[score_on], targets[score_on], majority[score_on])
            after = accuracies(held_out[0], offsets, *held_out[1:])
            before = accuracies(held_out[0], np.zeros_like(offsets), *held_out[1:])
            changes.append((after[0] - before[0], after[1] - before[1]))
    fer, fer_plus = np.mean(changes, axis=0)
    return float(fer), float(fer_plus)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", type=Path, nargs="+", help="folders with model.onnx and model.json")
    parser.add_argument("--fer2013", type=Path, default=SHARED / "datasets" / "fer2013")
    parser.add_argument(
        "--floors",
        type=float,
        nargs="+",
        default=[0.78, 0.785, 0.79],
        help="FER+ majority accuracies to hold (fractions)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="random halvings of PublicTest")
    args = parser.parse_args()
    split = load_split(args.fer2013, "PublicTest", args.fer2013 / "ferplus.csv")
    if split.votes is None:
        raise SystemExit(f"{args.fer2013 / 'ferplus.csv'}: no FER+ votes there")
    majority = split.votes.majority()
    for run in args.runs:
        probs = classify_crops(Classifier(load_model_card(str(run / "model.onnx"))), list(split.images))
        log_probs = np.log(np.clip(probs, 1e-7, 1.0))
        fer, fer_plus = accuracies(log_probs, np.zeros(probs.shape[1]), split.targets, majority)
        print(f"{run.name}: no offset: FER-2013 {fer:.2%}, FER+ {fer_plus:.2%}")
        for floor in args.floors:
            offsets = fit_offsets(log_probs, split.targets, majority, floor)
            fer, fer_plus = accuracies(log_probs, offsets, split.targets, majority)
            held_fer, held_plus = held_out_change(log_probs, split.targets, majority, floor, args.repeats)
            print(
                f"  FER+ floor {floor:.1%}: in-sample FER-2013 {fer:.2%}, FER+ {fer_plus:.2%}; held-out change "
                f"FER-2013 {held_fer * 100:+.2f}, FER+ {held_plus * 100:+.2f} points; offsets "
                + " ".join(f"{name} {value:+.2f}" for name, value in zip(EMOTIONS, offsets))
            )


if __name__ == "__main__":
    main()
