"""A real `emotion-train` run on generated data: its files, its card, and that it learned something."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnxruntime as ort

from .conftest import CLASSES, SIZE, run_env, train_command

EXPECTED_FILES = [
    "model.onnx",
    "model.json",
    "metrics.json",
    "history.csv",
    "history.json",
    "train.log",
    "config.json",
    "checkpoints/state.json",
    "checkpoints/best.keras",
    "plots/training_curves.png",
    "plots/confusion_test.png",
    "plots/confusion_val.png",
    "plots/roc_test.png",
    "plots/class_distribution.png",
    "plots/samples.png",
]


def test_run_writes_every_output(trained_run):
    missing = [name for name in EXPECTED_FILES if not (trained_run / name).is_file()]
    assert missing == []
    for png in (trained_run / "plots").glob("*.png"):
        assert png.stat().st_size > 5_000, png  # a real figure, not an empty canvas


def test_learns_well_above_chance_on_held_out_images(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["reported_on"] == "test"
    assert metrics["test"]["n"] == 3 * 30
    assert metrics["test"]["accuracy"] > 0.75  # chance is 1/3
    assert set(metrics["test"]["per_class"]) == set(CLASSES)
    matrix = np.asarray(metrics["test"]["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 90


def test_model_card_contents(trained_run):
    card = json.loads((trained_run / "model.json").read_text())
    assert card["labels"] == sorted(CLASSES)
    assert card["input"] == {
        **card["input"],
        "height": SIZE,
        "width": SIZE,
        "channels": 1,
        "dtype": "float32",
        "range": [0, 255],
    }
    assert card["backbone"]["name"] == "mobilenetv3small"
    assert card["metrics"]["test"]["split"].startswith("test: ")
    assert card["metrics"]["val"]["split"].startswith("val: ")
    training = card["training"]
    assert training["seed"] == 1
    assert training["epochs_run"] == 8
    assert training["command"][0] == "emotion-train"
    assert len(training["data"]["train"]["sha256"]) == 64
    assert training["data"]["train"]["skipped_unreadable"] == 1
    assert {"tensorflow", "keras", "tf2onnx", "onnxruntime"} <= set(training["versions"])
    assert card["export"]["max_abs_diff"] <= 1e-4


def test_onnx_contract_and_card_agree(trained_run, datasets):
    """[N, H, W, 1] float 0-255 in, [N, C] probabilities out, in the card's label order."""
    import cv2

    card = json.loads((trained_run / "model.json").read_text())
    session = ort.InferenceSession(str(trained_run / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape[1:] == [SIZE, SIZE, 1]
    images, truth = [], []
    for index, label in enumerate(card["labels"]):
        for path in sorted((datasets["test"] / label).glob("*.png"))[:5]:
            images.append(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)[..., None].astype(np.float32))
            truth.append(index)
    probs = session.run(None, {inp.name: np.stack(images)})[0]
    assert probs.shape == (len(images), len(card["labels"]))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(probs.argmax(axis=1) == np.asarray(truth)) > 0.7


def test_unreadable_image_is_reported(trained_run):
    log_text = (trained_run / "train.log").read_text()
    assert "broken.png" in log_text and "not a readable image" in log_text
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["skipped_images"]["train"] == [["ring/broken.png", "not a readable image"]]


def test_export_and_evaluate_are_separate_steps(trained_run, datasets, tmp_path):
    """A run folder alone (as copied from another machine) re-exports and re-evaluates."""
    import shutil
    import subprocess
    import sys

    from .conftest import run_env

    run = tmp_path / "copied-run"
    shutil.copytree(trained_run, run)
    (run / "model.onnx").unlink()
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(tmp_path / "cache"))
    exported = subprocess.run(
        [sys.executable, "-m", "emotion_train.cli", "export", str(run), "--no-tta"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "parity: max |onnx - keras|" in exported.stdout
    card = json.loads((run / "model.json").read_text())
    assert card["tta"] is None and card["export"]["flip_tta"] is False
    assert (run / "model.onnx").is_file()

    evaluated = subprocess.run(
        [
            sys.executable,
            "-m",
            "emotion_train.cli",
            "evaluate",
            str(run),
            "--test",
            str(datasets["test"]),
            "--test-pattern",
            "img_00*",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 3 * 10  # img_000 .. img_009 in each class
    assert metrics["test"]["split"].endswith("[img_00*]")


def test_init_from_fine_tunes_a_trained_run(cnn3_run, datasets, tmp_path):
    """--init-from starts from another run's best checkpoint; a checkpoint of another shape is one clear error."""
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(datasets["base"] / "cache"))
    best = cnn3_run / "checkpoints" / "best.keras"
    out = tmp_path / "fine-tuned"
    command = train_command(
        datasets["train"],
        out,
        "--val",
        str(datasets["test"]),
        "--epochs",
        "2",
        "--init-from",
        str(best),
        "--lr",
        "3e-4",
    )
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"starting from the weights of {best}" in (out / "train.log").read_text()
    scratch = json.loads((cnn3_run / "checkpoints" / "state.json").read_text())["history"][0]
    first_epoch = json.loads((out / "checkpoints" / "state.json").read_text())["history"][0]
    # It starts where the trained run ended, not from scratch: after one epoch its validation loss is far below
    # the one the same data, seed and backbone reach in their first epoch from scratch.
    assert first_epoch["val_loss"] < scratch["val_loss"] / 4 and first_epoch["val_accuracy"] > 0.9

    other = train_command(datasets["train"], tmp_path / "other", "--epochs", "2", "--init-from", str(best))
    other[other.index("--alpha") + 1] = "0.75"  # cnn3 with other channel counts
    result = subprocess.run(other, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "its architecture differs" in result.stderr
