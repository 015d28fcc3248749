"""Float16 storage for a float model's weights: half the file, the same float32 arithmetic.

The bundled model must stay within 15 MB, and two float32 MobileNetV2 members take 17.9. Int8 would shrink
it too, but int8 kernels differ between CPUs, in speed and in their numbers. Here each large float32 weight
is stored as float16 and a Cast turns it back into float32 in front of its readers, so every operation still
runs in float32: onnxruntime folds the casts when it loads the model, so the speed at run time is the float
model's, and the outputs differ from it only by the rounding of the weights (relative error at most 2^-11),
which `halve_model` measures on real images before it writes anything.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from emotion_batch.digest import sha256_file

from .artifacts import install_file, write_json_atomic
from .data import load_folder
from .evaluate import card_metrics
from .export import onnx_probabilities
from .quantize import Split, compare, read_source, time_per_face

log = logging.getLogger(__name__)

#: Weights with fewer elements stay float32 (biases, scales: no gain, and exact constants stay exact).
MIN_ELEMENTS = 1024
#: Largest |half - float| probability difference accepted on the check images.
MAX_ABS_DIFF = 0.02
CHECK_IMAGES = 512


class HalfError(ValueError):
    """A model that cannot be stored in float16, or whose outputs moved too far; nothing written."""


def halve_weights(model: onnx.ModelProto, min_elements: int = MIN_ELEMENTS) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose float32 initializers of at least ``min_elements`` values are stored as float16
    behind a Cast to float32 (same names for the readers); returns it and the number of weights converted."""
    out = copy.deepcopy(model)
    graph = out.graph
    graph_inputs = {i.name for i in graph.input}
    kept, halves, casts = [], [], []
    for init in graph.initializer:
        if (
            init.data_type != TensorProto.FLOAT
            or init.name in graph_inputs
            or math.prod(init.dims) < min_elements
        ):
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        if not np.all(np.isfinite(values)) or np.abs(values).max() > np.finfo(np.float16).max:
            raise HalfError(f"weight {init.name} does not fit in float16")
        halves.append(numpy_helper.from_array(values.astype(np.float16), f"{init.name}/float16"))
        casts.append(
            helper.make_node("Cast", [f"{init.name}/float16"], [init.name], to=TensorProto.FLOAT,
                             name=f"{init.name}/to_float32")
        )  # fmt: skip
    del graph.initializer[:]
    graph.initializer.extend([*kept, *halves])
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out, len(halves)


def halve_model(
    src_dir: Path, out_dir: Path, val: Split | None = None, command: Sequence[str] | None = None,
    max_abs_diff: float = MAX_ABS_DIFF,
) -> dict:  # fmt: skip
    """SRC_DIR's float model with float16 weight storage in OUT_DIR (model.onnx, model.json), once its outputs
    are within ``max_abs_diff`` of the float model's on the val images (else random images). Returns the card's
    ``weights_storage`` section."""
    src_dir, out_dir = Path(src_dir).resolve(), Path(out_dir)
    source, card = read_source(src_dir, action="halve", error=HalfError)
    labels, size = list(card["labels"]), int(card["input"]["height"])
    model = onnx.load(str(source))
    halved, converted = halve_weights(model)
    if converted == 0:
        raise HalfError(f"{source}: no float32 weight of {MIN_ELEMENTS} values or more to store as float16")
    if val is not None:
        dataset = load_folder(Path(val[0]), size, val[1], labels=labels)
        images = dataset.images[..., None].astype(np.float32)
        checked_on = f"val: {dataset.describe()}"
    else:
        images = np.random.default_rng(0).uniform(0, 255, (CHECK_IMAGES, size, size, 1)).astype(np.float32)
        checked_on = f"{CHECK_IMAGES} random images (no --val given)"
    with tempfile.TemporaryDirectory(prefix="emotion-half-") as work:
        half_path = Path(work) / "model.onnx"
        onnx.save(halved, str(half_path))
        full, half = onnx_probabilities(source, images), onnx_probabilities(half_path, images)
        check = {**compare(full, half), "set": checked_on}
        if check["max_abs_diff"] > max_abs_diff:
            raise HalfError(
                f"float16 weights move the probabilities by up to {check['max_abs_diff']:.4f} (more than "
                f"{max_abs_diff}); nothing written"
            )
        speed = time_per_face({"float32": source, "float16": half_path}, images[0])
        out_dir.mkdir(parents=True, exist_ok=True)
        install_file(half_path, out_dir / "model.onnx")
    section: dict[str, Any] = {
        "method": f"float32 weights of at least {MIN_ELEMENTS} values stored as float16, each behind a Cast to "
        "float32: all arithmetic in float32",
        "weights_converted": converted,
        "source": {
            "dir": str(src_dir),
            "model_sha256": sha256_file(source),
            "size_bytes": source.stat().st_size,
        },
        "size_bytes": (out_dir / "model.onnx").stat().st_size,
        "agreement": check,
        "ms_per_face": {name: round(value, 4) for name, value in speed.items()},
        "command": list(command or []),
    }
    if val is not None:
        pairs = (("float32", full), ("float16", half))
        section["val_accuracy"] = {kind: float(np.mean(p.argmax(1) == dataset.targets)) for kind, p in pairs}
    stored = copy.deepcopy(card)
    stored["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    if val is not None:
        from . import evaluate as ev

        metrics = ev.classification_metrics(half, dataset.targets, labels, checked_on)
        stored["metrics"] = {**stored.get("metrics", {}), "val": card_metrics(metrics)}
    stored["weights_storage"] = section
    write_json_atomic(out_dir / "model.json", stored)
    log.info(
        "wrote %s: %d weights as float16, %d -> %d bytes, max |diff| %.2e",
        out_dir / "model.onnx", converted, section["source"]["size_bytes"], section["size_bytes"],
        check["max_abs_diff"],
    )  # fmt: skip
    return section
