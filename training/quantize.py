"""Static int8 quantisation of an exported model, written only when it keeps its accuracy.

The runtime classifies on one CPU thread, where an int8 MobileNetV2 runs about twice as fast as the float
one. Int8 is lossy, so the quantised model is compared with its float source on real faces (argmax
agreement, probability differences and, given a labelled split, accuracy) before it replaces anything;
its card keeps the source's runtime contract and says how it was made and what it costs. Needs only onnx,
onnxruntime and the trainer's data/metrics helpers: no TensorFlow.

What works on the bundled MobileNetV2 (PublicTest 64.11% -> 63.72%, 1.8x faster, half the size):
onnxruntime's pre-processing, QDQ int8 with per-channel weights, MinMax calibration with a moving average
over one image per batch on 1000 training images, and the two ends of the network left in float
(``float_nodes``). Quantising everything on 300 images lost 1.8 points.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from emotion_batch.digest import sha256_file

from .artifacts import install_file, write_json_atomic
from .data import Dataset, load_folder
from .ensemble import CARD_FORMAT
from .evaluate import card_metrics
from .export import onnx_probabilities

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 1000
DEFAULT_SEED = 42
DEFAULT_MAX_DROP = 1.0  # points of validation accuracy
TIMING_RUNS = 300
TIMING_BLOCK = 25
FLOAT_RULE = (
    "only nodes with a Conv both before and after them are quantised; the preprocessing, the "
    "first and last Conv of each branch, and the pooling, classifier and softmax after it stay float"
)

Split = tuple[Path, str | None]  # a class-folder dataset and an optional file-name glob


class QuantizeError(ValueError):
    """A source that cannot be quantised, or an int8 model that loses too much accuracy; nothing written."""


def read_source(
    src_dir: Path, action: str = "quantise", error: type[ValueError] = QuantizeError
) -> tuple[Path, dict]:
    """SRC_DIR's model.onnx and card, checked to be a float model the runtime can read.

    ``action`` and ``error`` let the other steps on exported models (smoothing) say what they refused.
    """
    src_dir = Path(src_dir)
    model, card_path = src_dir / "model.onnx", src_dir / "model.json"
    for path in (model, card_path):
        if not path.is_file():
            raise error(f"{src_dir}: no {path.name}; {action} an exported run, an ensemble or models/")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, ValueError) as exc:
        raise error(f"{card_path}: unreadable: {exc}") from exc
    if card.get("format") != CARD_FORMAT:
        raise error(f"{card_path}: card format {card.get('format')!r}, expected {CARD_FORMAT!r}")
    if "quantization" in card:
        raise error(f"{src_dir}: this model is already quantised; {action} its float source instead")
    spec = card.get("input") or {}
    if not card.get("labels") or spec.get("height") is None or spec.get("height") != spec.get("width"):
        raise error(
            f"{card_path}: needs labels and a square input height x width, found "
            f"{spec.get('height')}x{spec.get('width')}"
        )
    if int(spec.get("channels", 1)) != 1:
        raise error(f"{card_path}: only greyscale (channels 1) models are supported")
    return model, card


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes to keep in float (FLOAT_RULE): where int8 rounding costs the most accuracy for little time.

    The preprocessing and stem Conv see the raw image; the last Conv, pooling, classifier, softmax and
    TTA average decide the class and produce the probabilities the runtime reports (quantised, those
    would sit on a 1/255 grid). They are a small part of the work; the body between them is nearly all
    of it. On the bundled model this keeps 94.9% argmax agreement with float where leaving only the
    first/last Conv and the classifier float keeps 92.5-93.0%, at the same speed. Found from the graph's
    wiring, so flip TTA's two branches each keep their own ends.
    """
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)

    def reaches_conv(start: int, upstream: bool) -> bool:
        seen, stack = {start}, [start]
        while stack:
            node = nodes[stack.pop()]
            if upstream:
                neighbours = [producer[name] for name in node.input if name in producer]
            else:
                neighbours = [i for name in node.output for i in consumers.get(name, [])]
            for i in neighbours:
                if nodes[i].op_type == "Conv":
                    return True
                if i not in seen:
                    seen.add(i)
                    stack.append(i)
        return False

    return [
        node.name for i, node in enumerate(nodes) if not (reaches_conv(i, True) and reaches_conv(i, False))
    ]


def quantize_onnx(src: Path, out: Path, calibration: np.ndarray, workdir: Path) -> list[str]:
    """Write the QDQ int8 model of ``src`` to ``out``; returns the nodes left in float.

    Calibration feeds one image per batch, in the given (random) order, and averages the per-image ranges:
    plain MinMax would stretch every range to fit the few most extreme images and waste int8 levels.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name: str, images: np.ndarray) -> None:
            self._feeds = iter([{name: image[None]} for image in images])

        def get_next(self) -> dict | None:
            return next(self._feeds, None)

    ort.set_default_logger_severity(3)  # errors only: the optimiser reports every initializer it drops
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantiser logs each bias it copies, at INFO, on root
    try:
        prepared = workdir / "preprocessed.onnx"
        # Symbolic shape inference fails on tf2onnx's graphs and adds nothing for a fixed-size image.
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        keep_float = float_nodes(model)
        quantize_static(
            str(prepared),
            str(out),
            Reader(model.graph.input[0].name, np.asarray(calibration, dtype=np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep_float,
            extra_options={"CalibMovingAverage": True},
        )
    except Exception as exc:  # onnxruntime and onnx raise many types; all of them mean "cannot"
        raise QuantizeError(f"{src}: onnxruntime could not quantise this model: {exc}") from exc
    finally:
        root.setLevel(level)
    return keep_float


def compare(float_probs: np.ndarray, int8_probs: np.ndarray) -> dict:
    """How closely the int8 model follows the float one on the same images."""
    diff = np.abs(np.asarray(int8_probs, np.float64) - np.asarray(float_probs, np.float64))
    return {
        "images": len(float_probs),
        "argmax_agreement": float(np.mean(int8_probs.argmax(1) == float_probs.argmax(1))),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }


def check_accuracy_drop(float_accuracy: float, int8_accuracy: float, max_drop: float) -> float:
    """The drop in points; QuantizeError when it exceeds ``max_drop`` (a negative one demands a gain)."""
    drop = round(100.0 * (float_accuracy - int8_accuracy), 9)  # 0.64 - 0.63 is not exactly 0.01
    if drop > max_drop:
        raise QuantizeError(
            f"the int8 model loses {drop:.2f} points of validation accuracy "
            f"({100 * float_accuracy:.2f}% -> {100 * int8_accuracy:.2f}%), more than "
            f"--max-drop {max_drop:g}; nothing written"
        )
    return drop


def time_per_face(
    models: dict[str, Path], image: np.ndarray, runs: int = TIMING_RUNS, block: int = TIMING_BLOCK
) -> dict[str, float]:
    """Median ms per face at batch 1 on one thread, as the runtime runs it.

    Blocks alternate between the models (and their order between rounds), so load from other processes
    hits every model alike and the ratio stays meaningful on a busy machine.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sessions = {
        name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for name, path in models.items()
    }
    feed = np.asarray(image, dtype=np.float32)[None]
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():  # warm-up: allocations and caches
        for _ in range(min(20, runs)):
            session.run(None, {session.get_inputs()[0].name: feed})
    order = list(sessions)
    for round_index in range(max(1, -(-runs // block))):
        for name in order if round_index % 2 == 0 else order[::-1]:
            session = sessions[name]
            input_name = session.get_inputs()[0].name
            for _ in range(min(block, runs - len(times[name]))):
                start = time.perf_counter()
                session.run(None, {input_name: feed})
                times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * statistics.median(values) for name, values in times.items()}


def _sample(dataset: Dataset, count: int, seed: int) -> np.ndarray:
    """``count`` distinct random images (all of them when fewer), in drawn order so classes interleave."""
    rng = np.random.default_rng(seed)
    index = rng.choice(len(dataset), size=min(count, len(dataset)), replace=False)
    return dataset.images[index][..., None].astype(np.float32)


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("onnxruntime", "onnx")}


def _measure(
    source: Path, int8: Path, splits: dict[str, Dataset], calib_images: np.ndarray, labels: list[str]
) -> tuple[dict, dict, dict]:
    """Agreement (on val, else the calibration images), int8 metrics and float/int8 accuracy per split."""
    from . import evaluate as ev

    probs = {
        name: {
            kind: onnx_probabilities(path, ds.images[..., None].astype(np.float32))
            for kind, path in (("float", source), ("int8", int8))
        }
        for name, ds in splits.items()
    }
    if "val" in probs:
        check = {
            **compare(probs["val"]["float"], probs["val"]["int8"]),
            "set": f"val: {splits['val'].describe()}",
        }
    else:
        check = {
            **compare(onnx_probabilities(source, calib_images), onnx_probabilities(int8, calib_images)),
            "set": "the calibration images (no --val given)",
        }
    log.info(
        "int8 vs float on %d images: argmax agreement %.4f, max |diff| %.3e, mean |diff| %.3e",
        check["images"],
        check["argmax_agreement"],
        check["max_abs_diff"],
        check["mean_abs_diff"],
    )
    results, accuracy = {}, {}
    for name, ds in splits.items():
        split = f"{name}: {ds.describe()}"
        results[name] = ev.classification_metrics(probs[name]["int8"], ds.targets, labels, split)
        float_acc = float(np.mean(probs[name]["float"].argmax(1) == ds.targets))
        int8_acc = results[name]["accuracy"]
        accuracy[name] = {
            "split": split,
            "n": len(ds),
            "float": float_acc,
            "int8": int8_acc,
            "drop_points": round(100 * (float_acc - int8_acc), 4),
        }
        log.info("%s accuracy: float %.4f, int8 %.4f", name, float_acc, int8_acc)
    return check, results, accuracy


def quantize_model(
    src_dir: Path,
    out_dir: Path,
    calibration: Split,
    images: int = DEFAULT_IMAGES,
    seed: int = DEFAULT_SEED,
    val: Split | None = None,
    test: Split | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    command: Sequence[str] | None = None,
    timing_runs: int = TIMING_RUNS,
) -> tuple[dict, dict]:
    """SRC_DIR's model as int8 in OUT_DIR (model.onnx, model.json, metrics.json, plots), once it passes.

    Calibrates on ``images`` random images of ``calibration``, compares float and int8 on the val split
    (else the calibration images) and refuses, writing nothing, when val accuracy drops by more than
    ``max_drop`` points. Returns the metrics (as in metrics.json) and the card's ``quantization`` section.
    """
    from . import evaluate as ev

    src_dir, out_dir = Path(src_dir).resolve(), Path(out_dir)
    source, card = read_source(src_dir)
    labels, size = list(card["labels"]), int(card["input"]["height"])
    calib_set = load_folder(Path(calibration[0]), size, calibration[1])
    splits = {
        name: load_folder(Path(spec[0]), size, spec[1], labels=labels)
        for name, spec in (("val", val), ("test", test))
        if spec
    }
    calib_images = _sample(calib_set, images, seed)
    if len(calib_images) < images:
        log.warning("%s: only %d images; calibrating on all of them", calib_set.describe(), len(calib_images))

    with tempfile.TemporaryDirectory(prefix="emotion-quantize-") as work:
        int8 = Path(work) / "model.onnx"
        log.info("calibrating on %d images of %s (seed %d)", len(calib_images), calib_set.describe(), seed)
        keep_float = quantize_onnx(source, int8, calib_images, Path(work))
        check, results, accuracy = _measure(source, int8, splits, calib_images, labels)
        if "val" in accuracy:
            check_accuracy_drop(accuracy["val"]["float"], accuracy["val"]["int8"], max_drop)
            accuracy["val"]["max_drop_points"] = max_drop
        speed = time_per_face({"float": source, "int8": int8}, calib_images[0], timing_runs)
        log.info("ms per face (batch 1, one thread): float %.3f, int8 %.3f", speed["float"], speed["int8"])
        out_dir.mkdir(parents=True, exist_ok=True)
        install_file(int8, out_dir / "model.onnx")

    section: dict[str, Any] = {
        "method": "onnxruntime static quantisation: QDQ, int8 weights per channel (QInt8), uint8 activations "
        "(QUInt8), MinMax calibration with a moving average, after quant_pre_process",
        "calibration": {
            "set": calib_set.describe(),
            "sha256": calib_set.content_hash,
            "available": len(calib_set),
            "images": len(calib_images),
            "selection": "distinct random images, one per calibration batch, in drawn order",
        },
        "seed": seed,
        "float_nodes": keep_float,
        "float_rule": FLOAT_RULE,
        "versions": _versions(),
        "source": {
            "dir": str(src_dir),
            "model_sha256": sha256_file(source),
            "size_bytes": source.stat().st_size,
            "metrics": card.get("metrics", {}),
        },
        "size_bytes": (out_dir / "model.onnx").stat().st_size,
        "agreement": check,
        "accuracy": accuracy,
        "ms_per_face": {
            "float": round(speed["float"], 4),
            "int8": round(speed["int8"], 4),
            "speedup": round(speed["float"] / speed["int8"], 3),
            "runs": timing_runs,
            "batch": 1,
            "threads": 1,
            "statistic": "median",
        },
        "command": list(command or []),
    }
    (out_dir / "plots").mkdir(exist_ok=True)
    for name, m in results.items():
        title = f"Int8 confusion matrix, {name} (acc {m['accuracy']:.3f})"
        ev.plot_confusion(m["confusion_matrix"], labels, title, out_dir / "plots" / f"confusion_{name}.png")
    results["reported_on"] = "test" if "test" in results else "val" if "val" in results else None
    results["skipped_images"] = {n: [list(s) for s in ds.skipped] for n, ds in splits.items() if ds.skipped}
    write_json_atomic(out_dir / "metrics.json", results)

    quantized = copy.deepcopy(card)
    quantized["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    # The source's figures describe the float model: only what was measured on the int8 one stays.
    quantized["metrics"] = {name: card_metrics(results[name]) for name in ("val", "test") if name in results}
    quantized["quantization"] = section
    write_json_atomic(out_dir / "model.json", quantized)
    log.info(
        "wrote %s (%d bytes, from %d)",
        out_dir / "model.onnx",
        section["size_bytes"],
        section["source"]["size_bytes"],
    )
    return results, section
