"""ONNX export reproduces Keras, including MobileNetV3's hard-sigmoid and in-graph flip TTA."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_train import export
from emotion_train.model import ModelConfig, build_classifier

from .conftest import make_dataset


@pytest.fixture(scope="module")
def real_images(tmp_path_factory) -> np.ndarray:
    from emotion_train.data import load_folder

    root = make_dataset(tmp_path_factory.mktemp("px") / "data", 8, seed=3)
    return load_folder(root, 40, cache_dir=root.parent / "cache").images[..., None].astype(np.float32)


@pytest.mark.parametrize(
    "backbone, flip_tta",
    [
        ("mobilenetv3small", False),
        ("mobilenetv3small", True),
        ("mobilenetv2", False),
        ("mobilenet", True),
        ("cnn3", False),
    ],
)
def test_export_matches_keras(tmp_path, real_images, backbone, flip_tta):
    import keras

    keras.utils.set_random_seed(0)
    classifier = build_classifier(
        ModelConfig(
            backbone=backbone,
            alpha=0.35 if backbone != "mobilenet" else 0.25,
            image_size=40,
            input_size=48,
            num_classes=3,
            weights="none",
        )
    )
    path = tmp_path / "m.onnx"
    parity = export.export_onnx(classifier, path, real_images, flip_tta=flip_tta)
    assert parity["max_abs_diff"] <= 1e-4 and parity["flip_tta"] is flip_tta
    got = export.onnx_probabilities(path, real_images)
    want = classifier.predict(real_images, verbose=0)
    if flip_tta:
        want = (want + classifier.predict(real_images[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_export_fails_loudly_when_numbers_differ(tmp_path, real_images, monkeypatch):
    classifier = build_classifier(
        ModelConfig(
            backbone="mobilenetv3small",
            alpha=0.35,
            image_size=40,
            input_size=48,
            num_classes=3,
            weights="none",
        )
    )
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # nothing can pass: the check must refuse
    with pytest.raises(export.ExportError, match="does not match"):
        export.export_onnx(classifier, tmp_path / "m.onnx", real_images)
    assert list(tmp_path.iterdir()) == [], "neither the model nor a temporary file of either attempt stays"
