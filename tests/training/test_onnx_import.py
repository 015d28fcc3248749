"""`--init-from model.onnx`: an exported graph (the bundled model, a run's export) rebuilt in Keras to train on."""

from __future__ import annotations

import json
import shutil
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
    images = [
        cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (48, 48)) for p in sorted(root.rglob("*.png"))
    ]
    return np.stack(images[:256])[..., None].astype(np.float32)


@pytest.fixture(scope="module")
def bundled_in_keras(faces):
    from emotion_train.config import ModelConfig
    from emotion_train.model import build_classifier
    from emotion_train.onnx_import import card_of, import_onnx

    card = card_of(BUNDLED)
    backbone = card["backbone"]
    classifier = build_classifier(
        ModelConfig(
            backbone=backbone["name"],
            alpha=backbone["alpha"],
            input_size=backbone["input_size"],
            image_size=card["input"]["height"],
            normalise=card["input"].get("normalise", "fixed"),
        )
    )
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


def _with_crop(run: Path, folder: Path) -> Path:
    """A copy of a run's export whose card carries a measured crop, as the bundled card does."""
    folder.mkdir()
    shutil.copy(run / "model.onnx", folder / "model.onnx")
    card = json.loads((run / "model.json").read_text())
    card["crop"] = {"scale": 0.93, "offset_x": -0.01, "offset_y": -0.02}
    (folder / "model.json").write_text(json.dumps(card))
    return folder / "model.onnx"


def test_init_from_an_exported_run(cnn3_run, datasets, tmp_path):
    """A run's model.onnx (exported with flip TTA, the default) starts a fine-tune as its best.keras would, and a
    run on the same images keeps the card's measured framing."""
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(datasets["base"] / "cache"))
    exported = _with_crop(cnn3_run, tmp_path / "start")
    assert json.loads((cnn3_run / "model.json").read_text())["export"]["flip_tta"] is True
    out = tmp_path / "from-onnx"
    command = train_command(
        datasets["train"],
        out,
        "--val",
        str(datasets["test"]),
        "--epochs",
        "2",
        "--init-from",
        str(exported),
        "--lr",
        "3e-4",
    )
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert (
        f"rebuilt {exported} in Keras (fixed normalisation, 48 px in-graph; largest probability difference"
        in log
    )
    scratch = json.loads((cnn3_run / "checkpoints" / "state.json").read_text())["history"][0]
    first_epoch = json.loads((out / "checkpoints" / "state.json").read_text())["history"][0]
    assert first_epoch["val_loss"] < scratch["val_loss"] / 4 and first_epoch["val_accuracy"] > 0.9
    crop = json.loads((out / "model.json").read_text())["crop"]
    log = (out / "train.log").read_text()
    assert crop == {
        "scale": 0.93,
        "offset_x": -0.01,
        "offset_y": -0.02,
        "inherited_from": str(exported.with_name("model.json")),
    }
    assert f"crop framing from {exported.with_name('model.json')}, trained on the same images" in log
    # The run it started from was trained from scratch, with no crop: its log says how to measure one.
    measure = f"scripts/measure_framing.py --fer {datasets['train'].parent} --split train --card"
    assert (
        "has no crop" in (cnn3_run / "train.log").read_text()
        and measure in (cnn3_run / "train.log").read_text()
    )

    # The bundled MobileNetV2 does not fit a cnn3 run: one line naming the file and the reason, nothing else.
    refused = train_command(
        datasets["train"], tmp_path / "refused", "--epochs", "2", "--init-from", str(BUNDLED)
    )
    result = subprocess.run(refused, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"--init-from {BUNDLED}" in result.stderr and "no exported weights" in result.stderr


@pytest.mark.parametrize(
    ("start", "same_images", "inherits"),
    [
        ("onnx", True, True),
        ("keras", True, True),  # RUN/checkpoints/best.keras: the card in RUN
        ("onnx", False, False),  # framing belongs to the images: other images, no crop
        ("teacher", True, True),  # a run from ImageNet weights takes its teacher's
        ("ensemble teacher", True, True),  # an ensemble's images are its members'
        ("ensemble teacher, member gone", True, False),  # images unknown: no crop
        ("teacher", False, False),
    ],
)
def test_only_a_run_on_the_same_images_inherits_the_framing(
    cnn3_run, datasets, tmp_path, start, same_images, inherits
):
    from emotion_train.data import load_folder
    from emotion_train.workflow import inherited_crop

    if start == "keras":
        run = tmp_path / "run"
        shutil.copytree(cnn3_run, run)
        _with_crop(cnn3_run, tmp_path / "card")
        shutil.copy(tmp_path / "card" / "model.json", run / "model.json")
        sources = (str(run / "checkpoints" / "best.keras"), None)
    elif start in ("onnx", "teacher"):
        exported = _with_crop(cnn3_run, tmp_path / "start")
        sources = (str(exported), None) if start == "onnx" else (None, str(exported))
    else:
        # An ensemble card as `emotion-train ensemble` writes it: a crop, members, no training data of its own.
        card = json.loads((_with_crop(cnn3_run, tmp_path / "start")).with_name("model.json").read_text())
        member = tmp_path / ("missing" if start.endswith("gone") else "start")
        ensemble = {
            "labels": card["labels"],
            "crop": card["crop"],
            "training": {"kind": "ensemble"},
            "members": [{"run_dir": str(member), "weight": 0.5}, {"run_dir": str(cnn3_run), "weight": 0.5}],
        }
        (tmp_path / "pair").mkdir()
        (tmp_path / "pair" / "model.json").write_text(json.dumps(ensemble))
        sources = (None, str(tmp_path / "pair" / "model.onnx"))
    train = load_folder(datasets["train" if same_images else "test"], 40, cache_dir=tmp_path / "cache")
    crop = inherited_crop(sources, train)
    assert (crop is not None) == inherits
    if inherits:
        assert crop["scale"] == 0.93 and crop["inherited_from"].endswith("model.json")


def test_a_start_with_other_classes_gives_its_backbone(cnn3_run, datasets, tmp_path):
    """Two classes of the three the start knows, stored at 32 px where the start's graph takes 40, and upsampled
    in-graph to 56 px where the start's upsamples to 48: its backbone starts the run, under a new two-class head
    (the rebuild checks the graph as it was exported: faces at its own size, its own upsampling)."""
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(datasets["base"] / "cache"))
    two = make_dataset(tmp_path / "two", per_class=60, seed=3, classes=("bars_h", "ring"))
    val = make_dataset(tmp_path / "two-val", per_class=20, seed=4, classes=("bars_h", "ring"))
    out = tmp_path / "two-class"
    command = train_command(
        two,
        out,
        "--val",
        str(val),
        "--epochs",
        "2",
        "--init-from",
        str(cnn3_run / "model.onnx"),
        "--lr",
        "1e-3",
        "--image-size",
        "32",
        "--input-size",
        "56",
    )
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "with a new head: it has 3 classes and these data 2 (bars_h, ring)" in log
    assert "(fixed normalisation, 48 px in-graph; largest probability difference" in log
    card = json.loads((out / "model.json").read_text())
    assert card["backbone"]["input_size"] == 56
    assert card["labels"] == ["bars_h", "ring"] and card["metrics"]["val"]["accuracy"] > 0.9
    assert (
        card["input"]["height"] == 32
        and json.loads((cnn3_run / "model.json").read_text())["input"]["height"] == 40
    )
