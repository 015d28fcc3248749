"""`--init-from model.onnx`: an exported graph (the bundled model, a run's export) rebuilt in Keras to train on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from .conftest import make_dataset, run_env, train_command

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "model.onnx"


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> np.ndarray:
    """256 generated 48 px greyscale images in the model's input contract (float32 0-255, NHWC)."""
    root = make_dataset(tmp_path_factory.mktemp("faces"), per_class=86, seed=7)
    images = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (48, 48)) for p in sorted(root.rglob("*.png"))]
    return np.stack(images[:256])[..., None].astype(np.float32)


@pytest.fixture(scope="module")
def bundled_in_keras(faces):
    from emotion_train.config import ModelConfig
    from emotion_train.model import build_classifier
    from emotion_train.onnx_import import card_of, import_onnx

    card = card_of(BUNDLED)
    backbone = card["backbone"]
    classifier = build_classifier(ModelConfig(backbone=backbone["name"], alpha=backbone["alpha"],
                                              input_size=backbone["input_size"], image_size=card["input"]["height"],
                                              normalise=card["input"].get("normalise", "fixed")))
    diff = import_onnx(classifier, BUNDLED, faces)
    return classifier, diff


def test_bundled_model_is_rebuilt_exactly(bundled_in_keras, faces):
    from emotion_train.export import onnx_probabilities

    classifier, diff = bundled_in_keras
    assert diff < 1e-4
    want = onnx_probabilities(BUNDLED, faces)
    got = classifier.predict(faces, verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_batch_norms_carry_the_measured_statistics(bundled_in_keras, faces):
    """In training mode a batch norm uses the batch's own statistics: on the calibration faces as one batch, those
    are the statistics the import measured, so training starts from the exported function, not a scrambled one."""
    classifier, _ = bundled_in_keras
    training = classifier(faces, training=True).numpy()
    inference = classifier(faces, training=False).numpy()
    largest = np.abs(training - inference).max()
    # Dropout (0.3 on the head) is the only other difference between the modes; it perturbs, it does not scramble.
    assert (training.argmax(1) == inference.argmax(1)).mean() > 0.8, largest


def test_another_architecture_is_refused_with_the_reason(faces):
    from emotion_train.config import ModelConfig
    from emotion_train.model import build_classifier
    from emotion_train.onnx_import import GraphImportError, import_onnx

    small = build_classifier(ModelConfig(backbone="cnn3", input_size=48, image_size=48))
    with pytest.raises(GraphImportError, match=r"no exported weights for .*block1_conv"):
        import_onnx(small, BUNDLED, faces)


def test_init_from_an_exported_run(cnn3_run, datasets, tmp_path):
    """A run's model.onnx (exported with flip TTA, the default) starts a fine-tune as its best.keras would."""
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(datasets["base"] / "cache"))
    exported = cnn3_run / "model.onnx"
    assert json.loads((cnn3_run / "model.json").read_text())["export"]["flip_tta"] is True
    out = tmp_path / "from-onnx"
    command = train_command(datasets["train"], out, "--val", str(datasets["test"]), "--epochs", "2",
                            "--init-from", str(exported), "--lr", "3e-4")
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert f"rebuilt {exported} in Keras (fixed normalisation; largest probability difference" in log
    scratch = json.loads((cnn3_run / "checkpoints" / "state.json").read_text())["history"][0]
    first_epoch = json.loads((out / "checkpoints" / "state.json").read_text())["history"][0]
    assert first_epoch["val_loss"] < scratch["val_loss"] / 4 and first_epoch["val_accuracy"] > 0.9

    # The bundled MobileNetV2 does not fit a cnn3 run: one line naming the file and the reason, nothing else.
    refused = train_command(datasets["train"], tmp_path / "refused", "--epochs", "2", "--init-from", str(BUNDLED))
    result = subprocess.run(refused, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"--init-from {BUNDLED}" in result.stderr and "no exported weights" in result.stderr
