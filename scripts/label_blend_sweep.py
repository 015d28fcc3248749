"""How the label blend trades FER-2013's labels against the FER+ raters, measured cheaply on one trained run.

    python scripts/label_blend_sweep.py RUN_DIR --votes ferplus.csv [--weights 0 0.3 0.6 1]

Full training runs cost about an hour each on 2 CPU cores, so this sweep keeps RUN_DIR's trained backbone
fixed and re-fits only its softmax head once per ``--label-weight`` value (the share of each voted target
kept from the folder label), on the run's own training images, then scores each head on the run's
validation split against both labelings. It shows the direction and size of the trade-off, not what a
full run at each blend would reach. Selection data only: never point it at PrivateTest.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    import keras

    from emotion_train.data import class_weights
    from emotion_train.labels import read_votes, soft_targets
    from emotion_train.model import load_classifier
    from emotion_train.train import RunDir
    from emotion_train.workflow import RunConfig, load_splits

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--votes", type=Path, required=True)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.3, 0.6, 1.0])
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    run = RunDir(args.run_dir)
    config = RunConfig.from_dict(json.loads(run.config.read_text()))
    if config.val and "PrivateTest" in (config.val.pattern or ""):
        raise SystemExit("the sweep selects: its validation split must not be PrivateTest")
    splits = load_splits(config)
    train, val = splits["train"], splits["val"]
    classifier = load_classifier(run.best)
    features_of = keras.Model(classifier.input, classifier.get_layer("head_dropout").input)
    f_train = features_of.predict(train.images[..., None].astype(np.float32), batch_size=256, verbose=0)
    f_val = features_of.predict(val.images[..., None].astype(np.float32), batch_size=256, verbose=0)
    original = classifier.predict(val.images[..., None].astype(np.float32), batch_size=256, verbose=0)

    train_votes = read_votes(args.votes, train.files, train.labels)
    val_votes = read_votes(args.votes, val.files, val.labels)
    majority = val_votes.majority()
    scored = majority >= 0

    def scores(probs: np.ndarray) -> dict:
        return {
            "fer2013_accuracy": float(np.mean(probs.argmax(1) == val.targets)),
            "ferplus_majority_accuracy": float(np.mean(probs[scored].argmax(1) == majority[scored])),
        }

    rows = [{"head": f"trained with the run (label weight {config.train.label_weight})", **scores(original)}]
    keep = train_votes.keep_mask()
    for weight in args.weights:
        targets = soft_targets(train_votes, train.targets, len(train.labels), weight)[keep]
        hard = targets.argmax(1)
        sample_weight = class_weights(hard, len(train.labels), config.train.class_weight)[hard]
        keras.utils.set_random_seed(config.train.seed)
        head = keras.Sequential(
            [keras.Input((f_train.shape[1],)), keras.layers.Dense(len(train.labels), activation="softmax")]
        )
        head.compile(keras.optimizers.Adam(1e-3), keras.losses.CategoricalCrossentropy())
        head.fit(
            f_train[keep], targets, sample_weight=sample_weight, batch_size=256, epochs=args.epochs, verbose=0
        )
        rows.append({"head": f"re-fitted, label weight {weight:g}", **scores(head.predict(f_val, verbose=0))})

    print(f"validation: {val.describe()} ({len(val)} images; {int(scored.sum())} with a FER+ majority)")
    print("| head | FER-2013 labels | FER+ majority |\n|---|---|---|")
    for row in rows:
        fer2013, fer_plus = 100 * row["fer2013_accuracy"], 100 * row["ferplus_majority_accuracy"]
        print(f"| {row['head']} | {fer2013:.2f}% | {fer_plus:.2f}% |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
