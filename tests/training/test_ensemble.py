"""`emotion-train ensemble`: tiny real ONNX members (built without TensorFlow) averaged in one graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from emotion_batch.digest import sha256_file
from emotion_batch.schema import EMOTIONS
from emotion_batch.vision.classification import Classifier, load_model_card
from emotion_batch.vision.detection import Detection
from emotion_train import ensemble
from emotion_train.cli import main
from emotion_train.export import onnx_probabilities

from .conftest import run_env

# The shipped card's single-model contract; what the shipped model is built from (an ensemble, quantised) is
# its own business, so those sections are dropped.
BUNDLED_CARD = {
    key: value
    for key, value in json.loads(
        (Path(__file__).resolve().parents[2] / "models" / "model.json").read_text()
    ).items()
    if key not in ("members", "quantization")
}
LABELS = list(EMOTIONS)


def make_member(
    run_dir: Path,
    seed: int,
    labels: list[str] = LABELS,
    size: int = 48,
    card_size: int | None = None,
    classes: int | None = None,
    batch: str | int = "N",
    **card_changes,
) -> Path:
    """A run folder with a real softmax classifier on [N, size, size, 1] and a card adapted from the bundled one.

    Every member uses the same node and initializer names, so combining them must rename to avoid collisions.
    """
    rng = np.random.default_rng(seed)
    classes = classes or len(labels)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, size, size, 1])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])
    init = [
        numpy_helper.from_array(np.array([-1, size * size], np.int64), "shape"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
        numpy_helper.from_array(rng.normal(0, 0.05, (size * size, classes)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.5, classes).astype(np.float32), "B"),
    ]
    nodes = [
        helper.make_node("Reshape", ["image", "shape"], ["flat"], name="flatten"),
        helper.make_node("Mul", ["flat", "scale"], ["scaled"], name="rescale"),
        helper.make_node("MatMul", ["scaled", "W"], ["scores"], name="dense"),
        helper.make_node("Add", ["scores", "B"], ["logits"], name="bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(nodes, "member", [image], [probs], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    run_dir.mkdir(parents=True)
    onnx.save(model, str(run_dir / "model.onnx"))
    card = json.loads(json.dumps(BUNDLED_CARD))
    card["labels"] = labels
    card["input"].update(height=card_size or size, width=card_size or size)
    card["tta"] = None if seed % 2 else "horizontal flip, averaged inside the graph"
    for key, value in card_changes.items():  # None deletes the key
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    (run_dir / "model.json").write_text(json.dumps(card))
    (run_dir / "config.json").write_text(json.dumps({"train": {"seed": seed}}))
    return run_dir


def make_faces(root: Path, per_class: int = 3, seed: int = 0) -> Path:
    """FER-2013's layout: one folder per label, PublicTest_* and PrivateTest_* images side by side."""
    rng = np.random.default_rng(seed)
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for split in ("PublicTest", "PrivateTest"):
            for i in range(per_class):
                cv2.imwrite(
                    str(root / label / f"{split}_{i}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8)
                )
    return root


def random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 48, 48, 1)).astype(np.float32)


@pytest.fixture(autouse=True)
def _dataset_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTION_TRAIN_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("weights", [None, (1.0, 1.0), (1.0, 3.0), (0.2, 0.5, 0.3)])
def test_combined_output_is_the_weighted_mean(tmp_path, weights):
    count = len(weights) if weights else 3
    members = [make_member(tmp_path / f"run{i}", seed=i) / "model.onnx" for i in range(count)]
    out = tmp_path / "ens" / "model.onnx"
    parity = ensemble.write_ensemble(members, out, random_images(16, seed=1), weights)
    assert parity["max_abs_diff"] <= 1e-5 and parity["images"] == 16

    w = np.ones(count) if weights is None else np.asarray(weights)
    w = w / w.sum()
    for n in (1, 7):  # the symbolic batch dimension survives
        images = random_images(n, seed=10 + n)
        expected = sum(wi * onnx_probabilities(m, images) for wi, m in zip(w, members))
        got = onnx_probabilities(out, images)
        assert got.shape == (n, len(LABELS))
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)

    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    assert graph_input.name == "image" and graph_input.type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "N"
    assert [o.name for o in model.graph.output] == ["probs"]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]


def test_failed_parity_writes_nothing(tmp_path, monkeypatch):
    members = [make_member(tmp_path / f"run{i}", seed=i) / "model.onnx" for i in range(2)]
    combine = ensemble.combine_models
    monkeypatch.setattr(ensemble, "combine_models", lambda models, weights: combine(models, weights[::-1]))
    out = tmp_path / "ens" / "model.onnx"
    with pytest.raises(ensemble.EnsembleError, match="differs from the members' weighted mean"):
        ensemble.write_ensemble(members, out, random_images(16, seed=1), (1.0, 3.0))
    assert list(out.parent.iterdir()) == []


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> dict:
    """One real `emotion-train ensemble` subprocess: two weighted members, evaluated on val and test."""
    base = tmp_path_factory.mktemp("ensemble")
    runs = [make_member(base / f"run{i}", seed=i) for i in range(2)]
    data = make_faces(base / "faces")
    out = base / "ens"
    command = [
        sys.executable,
        "-m",
        "emotion_train.cli",
        "ensemble",
        *map(str, runs),
        "--out",
        str(out),
        "--weight",
        "1",
        "--weight",
        "2",
        "--val",
        str(data),
        "--val-pattern",
        "PublicTest_*",
        "--test",
        str(data),
        "--test-pattern",
        "PrivateTest_*",
    ]
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(base / "cache"))
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"runs": runs, "data": data, "out": out, "stdout": result.stdout}


def test_cli_writes_model_card_metrics_and_plots(cli_run):
    out, runs = cli_run["out"], cli_run["runs"]
    for name in (
        "model.onnx",
        "model.json",
        "metrics.json",
        "plots/confusion_val.png",
        "plots/confusion_test.png",
    ):
        assert (out / name).is_file(), name
    assert "parity: max |ensemble - weighted mean|" in cli_run["stdout"]
    assert "val: accuracy" in cli_run["stdout"] and "test: accuracy" in cli_run["stdout"]

    card = json.loads((out / "model.json").read_text())
    assert card["format"] == "emotion-batch-model/1" and card["labels"] == LABELS
    assert card["input"] == BUNDLED_CARD["input"] and card["crop"] == BUNDLED_CARD["crop"]
    assert card["export"]["max_abs_diff"] <= 1e-5 and card["export"]["check_images"].startswith("val split")
    assert card["training"]["command"][:2] == ["emotion-train", "ensemble"]
    assert "--weight" in card["training"]["command"]
    assert [m["run_dir"] for m in card["members"]] == [str(r.resolve()) for r in runs]
    assert [m["model_sha256"] for m in card["members"]] == [sha256_file(r / "model.onnx") for r in runs]
    assert [m["weight"] for m in card["members"]] == pytest.approx([1 / 3, 2 / 3])
    assert [m["config"] for m in card["members"]] == [{"train": {"seed": 0}}, {"train": {"seed": 1}}]
    assert card["members"][0]["tta"] and card["members"][1]["tta"] is None
    assert card["members"][0]["metrics"] == BUNDLED_CARD["metrics"]
    assert "weighted mean of 2 members" in card["tta"]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reported_on"] == "test"
    assert metrics["val"]["split"].endswith("[PublicTest_*]") and metrics["val"]["n"] == 3 * len(LABELS)
    assert card["metrics"]["test"]["accuracy"] == metrics["test"]["accuracy"]


def test_cli_metrics_measure_the_weighted_mean(cli_run):
    """metrics.json's accuracy is that of (p0 + 2 p1) / 3 on the val images, decoded independently here."""
    files = sorted(cli_run["data"].glob("*/PublicTest_*.png"))
    images = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files])[..., None].astype(np.float32)
    targets = np.array([LABELS.index(f.parent.name) for f in files])
    p0, p1 = (onnx_probabilities(r / "model.onnx", images) for r in cli_run["runs"])
    accuracy = float(np.mean(((p0 + 2 * p1) / 3).argmax(1) == targets))
    metrics = json.loads((cli_run["out"] / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] == pytest.approx(accuracy)


def test_runtime_classifies_with_the_ensemble(cli_run):
    card = load_model_card(cli_run["out"] / "model.onnx")
    assert card.labels == tuple(LABELS) and (card.height, card.width) == (48, 48) and card.crop_from_card
    frame = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    faces = [Detection(40, 30, 50, 60, 0.9), Detection(100, 20, 40, 40, 0.8)]
    got = Classifier(card).classify(frame, faces)
    members = [Classifier(load_model_card(r / "model.onnx")).classify(frame, faces) for r in cli_run["runs"]]
    assert got.shape == (2, len(EMOTIONS))
    np.testing.assert_allclose(got, (members[0] + 2 * members[1]) / 3, atol=1e-5)


def test_cli_without_data_checks_on_noise(tmp_path):
    """Also: a fresh run without a measured crop joins one that has it, and one whose crop frames faces the same
    way but notes where it came from (a run that inherited the crop of its start); the ensemble keeps that crop."""
    inherited = {**BUNDLED_CARD["crop"], "inherited_from": "runs/start/model.json"}
    runs = [
        make_member(tmp_path / "run0", seed=0, crop=None),
        make_member(tmp_path / "run1", seed=1),
        make_member(tmp_path / "run2", seed=2, crop=inherited),
    ]
    result = CliRunner().invoke(main, ["ensemble", *map(str, runs), "--out", str(tmp_path / "ens")])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "ens" / "model.json").read_text())
    assert card["export"]["check_images"] == "uniform noise, seed 0" and card["metrics"] == {}
    assert (
        card["crop"] == BUNDLED_CARD["crop"]
        and load_model_card(tmp_path / "ens" / "model.onnx").crop_from_card
    )
    assert json.loads((tmp_path / "ens" / "metrics.json").read_text())["reported_on"] is None


SWAPPED = [LABELS[1], LABELS[0], *LABELS[2:]]
OTHER_CROP = {"scale": 1.2, "offset_x": 0.0, "offset_y": 0.0}


@pytest.mark.parametrize(
    "kind, member, words",
    [
        ("label order", {"labels": SWAPPED}, ["labels"]),
        ("label names", {"labels": [*LABELS[:-1], "contempt"]}, ["labels", "contempt"]),
        ("input size", {"size": 40}, ["input spec"]),
        ("graph vs card", {"size": 40, "card_size": 48}, ["does not match its card"]),
        ("output size", {"classes": 6}, ["6 classes", "7 labels"]),
        ("fixed batch", {"batch": 1}, ["input shape"]),
        ("crop", {"crop": OTHER_CROP}, ["crop"]),
    ],
)
def test_mismatched_members_are_refused(tmp_path, kind, member, words):
    good = make_member(tmp_path / "good", seed=0)
    bad = make_member(tmp_path / "bad", seed=1, **member)
    result = CliRunner().invoke(main, ["ensemble", str(good), str(bad), "--out", str(tmp_path / "ens")])
    assert result.exit_code == 1, result.output
    assert str(bad) in result.output
    for word in words:
        assert word in result.output
    assert not (tmp_path / "ens" / "model.onnx").exists()


def test_member_without_a_card_is_refused(tmp_path):
    good, bad = make_member(tmp_path / "good", seed=0), make_member(tmp_path / "bad", seed=1)
    (bad / "model.json").unlink()
    result = CliRunner().invoke(main, ["ensemble", str(good), str(bad), "--out", str(tmp_path / "ens")])
    assert result.exit_code == 1
    assert str(bad) in result.output and "no model.json" in result.output


@pytest.mark.parametrize(
    "args, words",
    [
        (["--weight", "1"], ["--weight", "1 values for 2 runs"]),
        (["--weight", "1", "--weight", "2", "--weight", "3"], ["--weight", "3 values for 2 runs"]),
        (["--weight", "1", "--weight", "0"], ["--weight"]),
        (["--weight", "abc", "--weight", "1"], ["--weight"]),
    ],
)
def test_bad_weights_are_usage_errors(tmp_path, args, words):
    runs = [str(make_member(tmp_path / f"run{i}", seed=i)) for i in range(2)]
    result = CliRunner().invoke(main, ["ensemble", *runs, "--out", str(tmp_path / "ens"), *args])
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output
    assert not (tmp_path / "ens").exists()


@pytest.mark.parametrize(
    "case, words",
    [
        ("one run", ["at least two runs"]),
        ("missing run", ["does not exist"]),
        ("out is a training run", ["holds a training run"]),
    ],
)
def test_other_usage_errors(tmp_path, case, words):
    runs = [str(make_member(tmp_path / f"run{i}", seed=i)) for i in range(2)]
    out = tmp_path / "ens"
    if case == "one run":
        runs = runs[:1]
    elif case == "missing run":
        runs.append(str(tmp_path / "nope"))
    else:
        out = Path(runs[0])
    result = CliRunner().invoke(main, ["ensemble", *runs, "--out", str(out)])
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output


@pytest.mark.parametrize(
    "members, normalise",
    [
        ([{}, {}], None),  # cards from before --normalise: the contract is kept as it is
        ([{"normalise": "per-image"}, {"normalise": "per-image"}], "per-image"),
        (
            [{}, {"normalise": "per-image"}],
            "fixed / per-image",
        ),  # each member's graph normalises its own input
    ],
)
def test_the_card_names_the_members_normalisations(members, normalise):
    inputs = [{"name": "image", "height": 48, **m} for m in members]
    got = ensemble._ensemble_input(inputs[0], inputs)
    assert got.get("normalise") == normalise and got["height"] == 48
