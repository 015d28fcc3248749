"""`emotion-train smooth`: Gaussian input smoothing put into an exported graph, checked against OpenCV."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from emotion_batch.digest import sha256_file
from emotion_batch.vision.classification import Classifier, load_model_card
from emotion_train import quantize
from emotion_train.cli import main
from emotion_train.export import onnx_probabilities
from emotion_train.smoothing import (
    PREFIX,
    SmoothingError,
    add_smoothing,
    check_parity,
    gaussian_kernel,
    reference_smooth,
    smoothing_matrix,
)

from .test_quantize import images, make_faces, make_model


@pytest.fixture(autouse=True)
def _dataset_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTION_TRAIN_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(("size", "sigma"), [(48, 0.5), (48, 0.7), (48, 1.0), (40, 2.0), (7, 0.8)])
def test_matrix_smoothing_equals_opencv(size, sigma):
    image = np.random.default_rng(size).uniform(0, 255, (size, size)).astype(np.float32)
    matrix = smoothing_matrix(size, sigma)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)  # brightness is preserved
    expected = reference_smooth(image[None, ..., None], sigma)[0, ..., 0]
    np.testing.assert_allclose(matrix @ image @ matrix.T, expected, atol=1e-3)


@pytest.mark.parametrize(("sigma", "taps"), [(0.3, 3), (0.7, 7), (1.0, 7), (1.2, 9)])
def test_kernel_reaches_three_sigma(sigma, taps):
    kernel = gaussian_kernel(sigma)
    assert len(kernel) == taps and kernel.sum() == pytest.approx(1.0)
    assert kernel.argmax() == taps // 2 and np.allclose(kernel, kernel[::-1])


def test_sigma_wider_than_the_image_is_refused():
    with pytest.raises(SmoothingError, match="too wide for a 5 px input"):
        smoothing_matrix(5, 2.0)


@pytest.mark.parametrize("branches", [1, 2])
def test_smoothed_graph_matches_the_reference_and_keeps_its_contract(tmp_path, branches):
    src = make_model(tmp_path / "m", branches=branches) / "model.onnx"
    model = onnx.load(str(src))
    smoothed = add_smoothing(model, 0.7)
    out = tmp_path / "smoothed.onnx"
    onnx.save(smoothed, str(out))

    assert [i.name for i in smoothed.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in smoothed.graph.output] == [o.name for o in model.graph.output]
    readers = [n.name for n in smoothed.graph.node if "image" in n.input]
    assert readers == [f"{PREFIX}/to_nchw"]  # every branch (and the mirror) now reads the smoothed image
    parity = check_parity(src, out, images(40, seed=3), 0.7)
    assert parity["max_abs_diff"] <= 1e-5
    raw = images(40, seed=3)
    assert not np.allclose(
        onnx_probabilities(src, raw), onnx_probabilities(out, raw), atol=1e-4
    )  # it does smooth


def test_quantiser_leaves_the_smoothing_in_float(tmp_path):
    model = add_smoothing(onnx.load(str(make_model(tmp_path / "m") / "model.onnx")), 0.7)
    kept = set(quantize.float_nodes(model))
    assert {n.name for n in model.graph.node if n.name.startswith(PREFIX)} <= kept
    assert "b0_conv0" in kept and "b0_conv1" not in kept  # the body is quantised as before


def test_smooth_command_chooses_sigma_on_val_and_writes_a_card(tmp_path):
    src = make_model(tmp_path / "m")
    val = make_faces(tmp_path / "val", per_class=6, seed=4)
    test = make_faces(tmp_path / "test", per_class=4, seed=5)
    out = tmp_path / "smoothed"
    result = CliRunner().invoke(
        main,
        [
            "smooth",
            str(src),
            "--out",
            str(out),
            "--sigma",
            "0.5",
            "--sigma",
            "1.0",
            "--val",
            str(val),
            "--test",
            str(test),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sigma 0.50: val accuracy" in result.output and "sigma 1.00: val accuracy" in result.output

    card = json.loads((out / "model.json").read_text())
    section = card["smoothing"]
    assert [c["sigma"] for c in section["candidates"]] == [0.5, 1.0]
    best = max(section["candidates"], key=lambda c: (c["val_accuracy"], -c["sigma"]))
    assert section["sigma"] == best["sigma"]
    assert section["chosen_on"] == f"val: {val.resolve()}"
    assert section["parity"]["max_abs_diff"] <= 1e-5 and section["parity"]["images"] == 42
    assert section["source"]["model_sha256"] == sha256_file(src / "model.onnx")
    assert section["command"][0] == "emotion-train"
    assert card["metrics"]["val"]["accuracy"] == pytest.approx(best["val_accuracy"])
    assert card["metrics"]["test"]["n"] == 28
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reported_on"] == "test"
    assert (out / "plots" / "confusion_val.png").is_file() and (
        out / "plots" / "confusion_test.png"
    ).is_file()

    # The runtime loads it like any other model, and the smoothing happens inside the graph.
    classifier = Classifier(load_model_card(out / "model.onnx"))
    face = cv2.imread(str(next((val / "happy").glob("*.png"))), cv2.IMREAD_GRAYSCALE)[None, ..., None]
    np.testing.assert_allclose(
        classifier.predict(face.astype(np.float32)),
        onnx_probabilities(src / "model.onnx", reference_smooth(face, section["sigma"])),
        atol=1e-5,
    )


def test_one_sigma_needs_no_val(tmp_path):
    src = make_model(tmp_path / "m")
    result = CliRunner().invoke(main, ["smooth", str(src), "--out", str(tmp_path / "s"), "--sigma", "0.8"])
    assert result.exit_code == 0, result.output
    section = json.loads((tmp_path / "s" / "model.json").read_text())["smoothing"]
    assert (
        section["sigma"] == 0.8
        and section["candidates"] == []
        and section["chosen_on"] == "given (one sigma)"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "choosing among several sigmas needs --val DIR"),
        (["--sigma", "0.5", "--sigma", "0.7"], "choosing among several sigmas needs --val DIR"),
        (["--sigma", "0.7", "--val-pattern", "Public*"], "a pattern needs --val DIR"),
        (["--sigma", "0"], "--sigma"),
    ],
)
def test_usage_errors(tmp_path, extra, message):
    src = make_model(tmp_path / "m")
    result = CliRunner().invoke(main, ["smooth", str(src), "--out", str(tmp_path / "s"), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "s").exists()


def test_refuses_to_smooth_twice_or_a_quantised_model(tmp_path):
    src = make_model(tmp_path / "m")
    runner = CliRunner()
    assert (
        runner.invoke(main, ["smooth", str(src), "--out", str(tmp_path / "s"), "--sigma", "0.7"]).exit_code
        == 0
    )
    again = runner.invoke(
        main, ["smooth", str(tmp_path / "s"), "--out", str(tmp_path / "s2"), "--sigma", "0.7"]
    )
    assert again.exit_code == 1
    assert "this model is already smoothed (sigma 0.7); smooth its source instead" in again.output

    int8 = tmp_path / "int8"
    calibration = make_faces(tmp_path / "calibration", per_class=3, seed=6)
    quantised = runner.invoke(
        main, ["quantize", str(src), "--out", str(int8), "--calibration", str(calibration)]
    )
    assert quantised.exit_code == 0, quantised.output
    refused = runner.invoke(main, ["smooth", str(int8), "--out", str(tmp_path / "s3"), "--sigma", "0.7"])
    assert refused.exit_code == 1
    assert "already quantised; smooth its float source instead" in refused.output
    assert not (tmp_path / "s2").exists() and not (tmp_path / "s3").exists()
