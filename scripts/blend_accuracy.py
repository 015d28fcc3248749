#!/usr/bin/env python
"""Clean PublicTest accuracy (FER-2013 labels and FER+ majority) of exported models and of their pairwise
probability averages (weights 0.3 / 0.5 / 0.7): a quick look before building an ensemble.

    python scripts/blend_accuracy.py RUN_DIR RUN_DIR [...]

The robustness suite, speed and the rest: scripts/evaluate_model.py on the built ensemble.
"""
import os
import sys
from pathlib import Path
import numpy as np
from emotion_batch.vision.classification import Classifier, load_model_card
from emotion_train.generalisation import classify_crops, ferplus_scores, load_split, accuracy

S = Path(os.environ.get("EMOTION_BATCH_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "datasets" / "fer2013"
split = load_split(S, "PublicTest", S / "ferplus.csv")
crops = list(split.images)
probs = {}
for run in sys.argv[1:]:
    card = load_model_card(str(Path(run) / "model.onnx"))
    probs[run] = classify_crops(Classifier(card), crops)
    p = probs[run]
    print(f"{Path(run).name:28s} FER-2013 {accuracy(p, split.targets):.4f}  FER+ {ferplus_scores(p, split.votes)['majority_accuracy']:.4f}")
runs = list(probs)
for i in range(len(runs)):
    for j in range(i + 1, len(runs)):
        for w in (0.3, 0.5, 0.7):
            p = w * probs[runs[i]] + (1 - w) * probs[runs[j]]
            print(f"{w:.1f} {Path(runs[i]).name} + {1-w:.1f} {Path(runs[j]).name}: FER-2013 {accuracy(p, split.targets):.4f}  FER+ {ferplus_scores(p, split.votes)['majority_accuracy']:.4f}")
