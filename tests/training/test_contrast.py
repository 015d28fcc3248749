"""`--normalise per-image`: each face reaches the backbone at its own mean and a fixed contrast, in the graph."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from emotion_train import export
from emotion_train.model import ModelConfig, PerImageContrast, build_classifier, load_classifier

from .conftest import SIZE, make_dataset, run_env, train_command


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> np.ndarray:
    from emotion_train.data import load_folder

    root = make_dataset(tmp_path_factory.mktemp("contrast") / "data", 6, seed=4)
    return load_folder(root, SIZE, cache_dir=root.parent / "cache").images[..., None].astype(np.float32)


def per_image_classifier():
    import keras

    keras.utils.set_random_seed(0)
    return build_classifier(
        ModelConfig(
            backbone="cnn3",
            alpha=0.5,
            image_size=SIZE,
            input_size=48,
            num_classes=3,
            weights="none",
            normalise="per-image",
        )
    )


def test_the_layer_is_the_formula_and_keeps_flat_patches_finite(faces):
    from keras import ops

    layer = PerImageContrast()
    flat = np.full((1, SIZE, SIZE, 1), 90.0, np.float32)
    flat[0, 0, 0, 0] = 91.0  # a standard deviation far below min_std
    x = np.concatenate([faces[:4], flat])
    got = ops.convert_to_numpy(layer(x))
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = np.maximum(x.std(axis=(1, 2, 3), keepdims=True), layer.min_std)
    np.testing.assert_allclose(got, (x - mean) / std * (layer.target_std / 127.5), atol=1e-5)
    assert np.abs(got[-1]).max() < 0.1  # the flat patch's one-level bump is not stretched to full contrast
    np.testing.assert_allclose(got[:4].std(axis=(1, 2, 3)), 55.0 / 127.5, rtol=1e-4)


@pytest.mark.parametrize("gain, offset", [(0.25, 0.0), (0.4, 120.0), (1.0, -40.0)])
def test_a_dimmed_or_faded_face_gives_the_same_probabilities_keras_and_onnx(tmp_path, faces, gain, offset):
    classifier = per_image_classifier()
    path = tmp_path / "m.onnx"
    parity = export.export_onnx(classifier, path, faces, flip_tta=False)
    assert parity["max_abs_diff"] <= 1e-4
    changed = faces * gain + offset  # as a float, so only the lighting differs, not the rounding
    np.testing.assert_allclose(
        classifier.predict(changed, verbose=0), classifier.predict(faces, verbose=0), atol=1e-5
    )
    np.testing.assert_allclose(
        export.onnx_probabilities(path, changed), export.onnx_probabilities(path, faces), atol=1e-5
    )
    fixed = build_classifier(
        ModelConfig(backbone="cnn3", alpha=0.5, image_size=SIZE, input_size=48, num_classes=3, weights="none")
    )
    assert not np.allclose(fixed.predict(changed, verbose=0), fixed.predict(faces, verbose=0), atol=1e-3)


def test_a_saved_per_image_classifier_loads_back(tmp_path, faces):
    classifier = per_image_classifier()
    classifier.save(tmp_path / "best.keras")
    reloaded = load_classifier(tmp_path / "best.keras")
    assert isinstance(reloaded.get_layer("normalise"), PerImageContrast)
    np.testing.assert_allclose(
        reloaded.predict(faces, verbose=0), classifier.predict(faces, verbose=0), atol=1e-6
    )


@pytest.mark.slow
def test_a_per_image_run_trains_exports_records_it_and_re_exports(datasets, tmp_path):
    """A real `emotion-train --normalise per-image` run, then `emotion-train export` in a new process (which
    must know the layer to load best.keras)."""
    from emotion_train.data import load_folder

    out = tmp_path / "run"
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(datasets["base"] / "cache"))
    result = subprocess.run(
        train_command(
            datasets["train"],
            out,
            "--val",
            str(datasets["test"]),
            "--epochs",
            "3",
            "--normalise",
            "per-image",
        ),
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    card = json.loads((out / "model.json").read_text())
    assert card["input"]["normalise"] == "per-image"
    assert card["training"]["config"]["model"]["normalise"] == "per-image"
    assert card["metrics"]["val"]["accuracy"] > 0.6  # it learned the patterns

    test = load_folder(datasets["test"], SIZE).images[..., None].astype(np.float32)
    np.testing.assert_allclose(
        export.onnx_probabilities(out / "model.onnx", test * 0.3 + 20),
        export.onnx_probabilities(out / "model.onnx", test),
        atol=1e-5,
    )

    (out / "model.onnx").unlink()
    again = subprocess.run(
        [sys.executable, "-m", "emotion_train.cli", "export", str(out)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "model.onnx").is_file() and "parity: max |onnx - keras|" in again.stdout


def test_an_unknown_normalisation_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from emotion_train.cli import main

    result = CliRunner().invoke(
        main, ["train", str(tmp_path), "--out", str(tmp_path / "run"), "--normalise", "histogram"]
    )
    assert result.exit_code == 2 and "--normalise" in result.output
    assert not (tmp_path / "run").exists()
