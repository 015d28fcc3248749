"""`emotion-train quantize`: a tiny real ONNX CNN (built without TensorFlow) quantised to int8 and checked."""

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
from emotion_train import quantize
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
    if key not in ("members", "quantization", "smoothing")
}
LABELS = list(EMOTIONS)
CHANNELS = (8, 32, 32, 16)  # the two middle Convs are quantised; the ends stay float


def make_model(folder: Path, branches: int = 1, seed: int = 0) -> Path:
    """A folder with model.onnx and model.json: image [N,48,48,1] NHWC -> four Conv+Relu -> pool -> MatMul.

    ``branches=2`` also runs the mirrored image through the same weights and averages, like flip TTA.
    """
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.array(1 / 255, np.float32), "scale")]
    if branches == 2:
        constants = {"width_axis": [2], "last": [-1], "before_first": [-100], "backwards": [-1]}
        inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in constants.items()]
        inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    previous = 1
    for k, channels in enumerate(CHANNELS):
        weight = rng.normal(0, np.sqrt(2 / (9 * previous)), (channels, previous, 3, 3))
        inits += [
            numpy_helper.from_array(weight.astype(np.float32), f"conv{k}_w"),
            numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), f"conv{k}_b"),
        ]
        previous = channels
    inits += [
        numpy_helper.from_array(np.zeros((previous, len(LABELS)), np.float32), "dense_w"),
        numpy_helper.from_array(np.zeros(len(LABELS), np.float32), "dense_b"),
    ]  # set by _spread_classes

    nodes = (
        [
            helper.make_node(
                "Slice",
                ["image", "last", "before_first", "width_axis", "backwards"],
                ["mirrored"],
                name="mirror",
            )
        ]
        if branches == 2
        else []
    )
    outputs = []
    for b, source in enumerate(["image", "mirrored"][:branches]):
        x = f"b{b}_"
        nodes += [
            helper.make_node("Transpose", [source], [x + "nchw"], perm=[0, 3, 1, 2], name=x + "to_nchw"),
            helper.make_node("Mul", [x + "nchw", "scale"], [x + "scaled"], name=x + "rescale"),
        ]
        current = x + "scaled"
        for k in range(len(CHANNELS)):
            nodes += [
                helper.make_node(
                    "Conv",
                    [current, f"conv{k}_w", f"conv{k}_b"],
                    [x + f"conv{k}"],
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                    strides=[2 if k == 0 else 1] * 2,
                    name=x + f"conv{k}",
                ),
                helper.make_node("Relu", [x + f"conv{k}"], [x + f"relu{k}"], name=x + f"relu{k}"),
            ]
            current = x + f"relu{k}"
        nodes += [
            helper.make_node("GlobalAveragePool", [current], [x + "pooled"], name=x + "pool"),
            helper.make_node("Flatten", [x + "pooled"], [x + "features"], axis=1, name=x + "flatten"),
            helper.make_node("MatMul", [x + "features", "dense_w"], [x + "scores"], name=x + "dense"),
            helper.make_node("Add", [x + "scores", "dense_b"], [x + "logits"], name=x + "bias"),
            helper.make_node(
                "Softmax",
                [x + "logits"],
                [x + "probs" if branches == 2 else "probs"],
                axis=1,
                name=x + "softmax",
            ),
        ]
        outputs.append(x + "probs")
    if branches == 2:
        nodes += [
            helper.make_node("Add", outputs, ["probs_sum"], name="tta_sum"),
            helper.make_node("Mul", ["probs_sum", "half"], ["probs"], name="tta_mean"),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 48, 48, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(LABELS)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    _spread_classes(model, rng)
    onnx.checker.check_model(model, full_check=True)
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    card = json.loads(json.dumps(BUNDLED_CARD))
    card["tta"] = "horizontal flip, averaged inside the graph" if branches == 2 else None
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def _spread_classes(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    """Random classifier weights on centred features, scaled to their spread, so predictions vary by image.

    Without this one class wins almost every image, which would make an agreement check meaningless. One
    scale for all features: a feature that is nearly always 0 must not have its rounding noise magnified.
    """
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.append(
        helper.make_tensor_value_info("b0_features", TensorProto.FLOAT, ["N", CHANNELS[-1]])
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    features = session.run(None, {"image": images(100, seed=99)})[0].astype(np.float64)
    weight = rng.normal(0, 1.5, (CHANNELS[-1], len(LABELS))) / features.std(axis=0).mean()
    values = {"dense_w": weight, "dense_b": -features.mean(axis=0) @ weight}
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].astype(np.float32), init.name))


def face_like(rng: np.random.Generator) -> np.ndarray:
    """Varied brightness, contrast and shading with a few blobs, so the tiny CNN's outputs differ per image."""
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    angle = rng.uniform(0, 2 * np.pi)
    image = rng.uniform(40, 180) + rng.uniform(0, 80) * (np.cos(angle) * xx + np.sin(angle) * yy)
    for _ in range(3):
        cy, cx, r = rng.uniform(8, 40), rng.uniform(8, 40), rng.uniform(3, 10)
        image += rng.uniform(-60, 60) * (((yy * 47 - cy) ** 2 + (xx * 47 - cx) ** 2) < r * r)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def make_faces(root: Path, per_class: int, seed: int, prefixes=("img",)) -> Path:
    rng = np.random.default_rng(seed)
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for prefix in prefixes:
            for i in range(per_class):
                cv2.imwrite(str(root / label / f"{prefix}_{i}.png"), face_like(rng))
    return root


def images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([face_like(rng) for _ in range(n)])[..., None].astype(np.float32)


@pytest.fixture(autouse=True)
def _dataset_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTION_TRAIN_CACHE", str(tmp_path / "cache"))


def test_only_the_body_between_first_and_last_conv_is_quantised(tmp_path):
    model = onnx.load(str(make_model(tmp_path / "m", branches=2) / "model.onnx"))
    quantised = {n.name for n in model.graph.node} - set(quantize.float_nodes(model))
    assert quantised == {
        f"b{b}_{name}" for b in (0, 1) for name in ("relu0", "conv1", "relu1", "conv2", "relu2")
    }


@pytest.mark.parametrize("branches", [1, 2])
def test_int8_model_is_qdq_smaller_and_agrees(tmp_path, branches):
    src = make_model(tmp_path / "m", branches=branches) / "model.onnx"
    out = tmp_path / "int8.onnx"
    kept = quantize.quantize_onnx(src, out, images(40, seed=1), tmp_path)
    assert {f"b{b}_conv0" for b in range(branches)} <= set(kept)

    graph = onnx.load(str(out)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    int8_convs = {
        n.name for n in graph.node if n.op_type == "Conv" and producer.get(n.input[1]) == "DequantizeLinear"
    }
    assert int8_convs == {f"b{b}_conv{k}" for b in range(branches) for k in (1, 2)}
    assert producer["probs"] != "DequantizeLinear"  # the probabilities stay float
    assert out.stat().st_size <= src.stat().st_size

    check = images(60, seed=2)
    agreement = quantize.compare(onnx_probabilities(src, check), onnx_probabilities(out, check))
    assert agreement["images"] == 60
    assert agreement["argmax_agreement"] >= 0.9 and agreement["mean_abs_diff"] < 0.02


@pytest.mark.parametrize(
    "float_acc, int8_acc, max_drop, ok",
    [
        (0.6411, 0.6353, 1.0, True),
        (0.64, 0.63, 1.0, True),  # exactly 1 point, despite 0.64 - 0.63 != 0.01 in binary
        (0.64, 0.6299, 1.0, False),
        (0.64, 0.64, 0.0, True),
        (0.64, 0.6399, 0.0, False),
        (0.60, 0.62, 0.0, True),  # a gain is never refused
        (0.64, 0.64, -0.5, False),  # a negative tolerance demands a gain
    ],
)
def test_accuracy_drop_check(float_acc, int8_acc, max_drop, ok):
    if ok:
        drop = quantize.check_accuracy_drop(float_acc, int8_acc, max_drop)
        assert drop == pytest.approx(100 * (float_acc - int8_acc))
    else:
        with pytest.raises(quantize.QuantizeError, match="nothing written"):
            quantize.check_accuracy_drop(float_acc, int8_acc, max_drop)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> dict:
    """One real `emotion-train quantize` subprocess on a flip-TTA model, with calibration, val and test."""
    base = tmp_path_factory.mktemp("quantize")
    src = make_model(base / "src", branches=2)
    train = make_faces(base / "train", per_class=6, seed=0)
    faces = make_faces(base / "faces", per_class=5, seed=1, prefixes=("PublicTest", "PrivateTest"))
    out = base / "int8"
    command = [
        sys.executable,
        "-m",
        "emotion_train.cli",
        "quantize",
        str(src),
        "--out",
        str(out),
        "--calibration",
        str(train),
        "--images",
        "30",
        "--seed",
        "3",
        "--val",
        str(faces),
        "--val-pattern",
        "PublicTest_*",
        "--test",
        str(faces),
        "--test-pattern",
        "PrivateTest_*",
    ]
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(base / "cache"))
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"src": src, "train": train, "faces": faces, "out": out, "stdout": result.stdout}


def test_cli_writes_int8_model_card_metrics_and_plots(cli_run):
    out, src = cli_run["out"], cli_run["src"]
    for name in (
        "model.onnx",
        "model.json",
        "metrics.json",
        "plots/confusion_val.png",
        "plots/confusion_test.png",
    ):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert "argmax agreement" in cli_run["stdout"] and "ms per face" in cli_run["stdout"]
    assert "val: accuracy" in cli_run["stdout"] and "test: accuracy" in cli_run["stdout"]

    card = json.loads((out / "model.json").read_text())
    source = json.loads((src / "model.json").read_text())
    for key in ("format", "labels", "input", "output", "crop", "backbone", "tta", "export", "training"):
        assert card[key] == source[key], key
    q = card["quantization"]
    assert q["source"]["model_sha256"] == sha256_file(src / "model.onnx")
    assert q["source"]["metrics"] == source["metrics"] and q["source"]["dir"] == str(src.resolve())
    assert q["seed"] == 3 and q["calibration"]["images"] == 30 and q["calibration"]["available"] == 42
    assert q["calibration"]["set"] == str(cli_run["train"].resolve())
    assert "b1_conv0" in q["float_nodes"] and q["versions"]["onnxruntime"]
    assert q["size_bytes"] == (out / "model.onnx").stat().st_size
    assert q["agreement"]["images"] == 35 and q["agreement"]["set"].endswith("[PublicTest_*]")
    assert q["agreement"]["argmax_agreement"] >= 0.9
    assert set(q["accuracy"]) == {"val", "test"} and q["accuracy"]["val"]["max_drop_points"] == 1.0
    assert q["ms_per_face"]["float"] > 0 and q["ms_per_face"]["int8"] > 0 and q["ms_per_face"]["threads"] == 1
    assert q["command"][:2] == ["emotion-train", "quantize"] and "--calibration" in q["command"]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reported_on"] == "test" and metrics["val"]["n"] == 35
    assert set(card["metrics"]) == {"val", "test"}
    for name in ("val", "test"):
        assert card["metrics"][name]["accuracy"] == metrics[name]["accuracy"] == q["accuracy"][name]["int8"]
        assert card["metrics"][name]["split"].startswith(f"{name}: {cli_run['faces'].resolve()}")


def test_cli_accuracy_is_the_int8_models(cli_run):
    """metrics.json's val accuracy is that of the written int8 model on images decoded independently here."""
    files = sorted(cli_run["faces"].glob("*/PublicTest_*.png"))
    batch = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files])[..., None].astype(np.float32)
    targets = np.array([LABELS.index(f.parent.name) for f in files])
    q = json.loads((cli_run["out"] / "model.json").read_text())["quantization"]
    for kind, model in (("int8", cli_run["out"]), ("float", cli_run["src"])):
        accuracy = float(np.mean(onnx_probabilities(model / "model.onnx", batch).argmax(1) == targets))
        assert q["accuracy"]["val"][kind] == pytest.approx(accuracy)


def test_runtime_classifies_with_the_int8_model(cli_run):
    card = load_model_card(cli_run["out"] / "model.onnx")
    assert card.labels == tuple(LABELS) and (card.height, card.width) == (48, 48) and card.crop_from_card
    frame = cv2.cvtColor(cv2.resize(face_like(np.random.default_rng(5)), (160, 120)), cv2.COLOR_GRAY2BGR)
    faces = [Detection(40, 30, 50, 60, 0.9), Detection(100, 20, 40, 40, 0.8)]
    got = Classifier(card).classify(frame, faces)
    expected = Classifier(load_model_card(cli_run["src"] / "model.onnx")).classify(frame, faces)
    assert got.shape == (2, len(EMOTIONS))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, expected, atol=0.1)


def _quantize_args(tmp_path: Path, *extra: str) -> tuple[list[str], Path]:
    src = make_model(tmp_path / "src")
    train = make_faces(tmp_path / "train", per_class=3, seed=0)
    out = tmp_path / "int8"
    return [
        "quantize",
        str(src),
        "--out",
        str(out),
        "--calibration",
        str(train),
        "--images",
        "10",
        *extra,
    ], out


def test_refused_model_writes_nothing(tmp_path):
    """With a negative tolerance even a perfect copy is refused: the check runs and nothing lands in OUT_DIR."""
    val = make_faces(tmp_path / "val", per_class=2, seed=1)
    args, out = _quantize_args(tmp_path, "--val", str(val), "--max-drop", "-0.5")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "validation accuracy" in result.output and "nothing written" in result.output
    assert not out.exists()


def test_without_val_checks_on_calibration_images(tmp_path):
    train = make_faces(tmp_path / "train", per_class=2, seed=0)
    results, section = quantize.quantize_model(
        make_model(tmp_path / "src"), tmp_path / "int8", (train, None), images=100, seed=0, timing_runs=5
    )
    assert section["agreement"]["set"].startswith("the calibration images")
    assert section["agreement"]["images"] == section["calibration"]["images"] == 14
    assert section["accuracy"] == {} and results["reported_on"] is None
    card = json.loads((tmp_path / "int8" / "model.json").read_text())
    assert card["metrics"] == {} and card["quantization"]["ms_per_face"]["runs"] == 5


@pytest.mark.parametrize(
    "case, words",
    [
        ("max-drop without val", ["--max-drop", "needs --val"]),
        ("pattern without val", ["--val-pattern", "needs --val"]),
        ("out is the source", ["--out", "float source"]),
        ("no calibration", ["--calibration"]),
        ("missing source", ["does not exist"]),
        ("zero images", ["--images"]),
    ],
)
def test_usage_errors(tmp_path, case, words):
    args, out = _quantize_args(tmp_path)
    if case == "max-drop without val":
        args += ["--max-drop", "0.5"]
    elif case == "pattern without val":
        args += ["--val-pattern", "PublicTest_*"]
    elif case == "out is the source":
        args[args.index("--out") + 1] = args[1]
    elif case == "no calibration":
        del args[args.index("--calibration") : args.index("--calibration") + 2]
    elif case == "missing source":
        args[1] = str(tmp_path / "nope")
    else:
        args[args.index("--images") + 1] = "0"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "case, words",
    [
        ("no card", ["no model.json"]),
        ("already int8", ["already quantised"]),
        ("wrong val classes", ["differ from the training classes"]),
        ("broken model", ["could not quantise"]),
    ],
)
def test_data_errors(tmp_path, case, words):
    args, out = _quantize_args(tmp_path)
    src = Path(args[1])
    if case == "no card":
        (src / "model.json").unlink()
    elif case == "already int8":
        card = json.loads((src / "model.json").read_text())
        (src / "model.json").write_text(json.dumps({**card, "quantization": {}}))
    elif case == "broken model":
        (src / "model.onnx").write_bytes(b"not an onnx model")
    else:
        val = make_faces(tmp_path / "val", per_class=1, seed=1)
        (val / "angry").rename(val / "cross")
        args += ["--val", str(val)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    for word in words:
        assert word in result.output
    assert not out.exists()
