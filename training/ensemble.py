"""Average several exported runs inside one ONNX graph, so the runtime ships an ensemble unchanged.

The runtime only knows "one model.onnx with its model.json", so the ensemble is one graph: every member's
nodes under its own name prefix, all fed by the shared ``image`` input, their ``probs`` combined by a
weighted mean. Members must agree on everything the runtime reads from a card (labels, input contract,
crop), or averaging their columns would be meaningless. Needs only onnx, onnxruntime and the trainer's
data/metrics helpers: no TensorFlow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from emotion_batch.digest import sha256_file
from emotion_batch.files import atomic_path

from .artifacts import framing_of, write_json_atomic
from .evaluate import card_metrics
from .export import OUTPUT_NAME, onnx_probabilities

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
PARITY_IMAGES = 256
CARD_FORMAT = "emotion-batch-model/1"
INPUT_KEYS = ("name", "height", "width", "channels", "dtype", "range", "layout")  # the contract, not the note


class EnsembleError(ValueError):
    """Members that cannot be averaged, or a combined graph that does not reproduce their mean."""


@dataclass(frozen=True)
class Member:
    """One exported run: its model, its card and (when it is a training run) its config."""

    run_dir: Path
    onnx: Path
    card: dict
    config: dict | None

    @classmethod
    def load(cls, run_dir: Path) -> Member:
        run_dir = Path(run_dir).resolve()
        model, card_path = run_dir / "model.onnx", run_dir / "model.json"
        for path in (model, card_path):
            if not path.is_file():
                raise EnsembleError(f"{run_dir}: no {path.name}; export the run first (emotion-train export)")
        config = run_dir / "config.json"
        return cls(run_dir, model, _read_json(card_path), _read_json(config) if config.is_file() else None)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EnsembleError(f"{path}: unreadable: {exc}") from exc


def normalised_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """Weights summing to 1, so the combined output stays a probability distribution."""
    if weights is None or len(weights) == 0:
        return [1.0 / count] * count
    if len(weights) != count:
        raise EnsembleError(f"{len(weights)} weights for {count} members; give one per member or none")
    if any(not w > 0 for w in weights):
        raise EnsembleError(f"weights must be positive, got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    initializers = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def tensor_dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """A tensor's shape: ints for fixed sizes, the name of a symbolic one, None when unknown."""
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in value.type.tensor_type.shape.dim
    ]


def _signature(model: onnx.ModelProto, where: str) -> dict:
    """The graph-level contract of one member, checked against the card and the other members."""
    inputs, outputs = real_inputs(model.graph), list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise EnsembleError(
            f"{where}: expected one input and one output, found {len(inputs)} and {len(outputs)}"
        )
    in_dims, out_dims = tensor_dims(inputs[0]), tensor_dims(outputs[0])
    if len(in_dims) != 4 or len(out_dims) != 2:
        raise EnsembleError(
            f"{where}: expected input [N, H, W, C] and output [N, classes], found {in_dims} and {out_dims}"
        )
    return {
        "input dtype": TensorProto.DataType.Name(inputs[0].type.tensor_type.elem_type),
        "output dtype": TensorProto.DataType.Name(outputs[0].type.tensor_type.elem_type),
        "input shape": [
            None if isinstance(d, str) else d for d in in_dims
        ],  # symbolic batch names may differ
        "output size": out_dims[1],
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
    }


def check_members(models: Sequence[onnx.ModelProto], cards: Sequence[dict], names: Sequence[str]) -> None:
    """Refuse members the runtime could not treat as one model; every message names the offending member."""
    if len(models) < 2:
        raise EnsembleError("an ensemble needs at least two members")
    first, crop_from = None, None
    for model, card, name in zip(models, cards, names):
        signature = _signature(model, name)
        spec = card.get("input") or {}
        labels = card.get("labels")
        if not labels:
            raise EnsembleError(f"{name}: model card has no labels")
        expected = [spec.get("height"), spec.get("width"), spec.get("channels", 1)]
        if signature["input shape"][1:] != expected:
            raise EnsembleError(
                f"{name}: graph input {signature['input shape']} does not match its card's "
                f"input {expected[0]}x{expected[1]}x{expected[2]}"
            )
        if signature["output size"] != len(labels):
            raise EnsembleError(
                f"{name}: graph output has {signature['output size']} classes but its card "
                f"lists {len(labels)} labels"
            )
        crop = framing_of(card)
        if crop and crop_from and crop != crop_from[0]:  # a run without a measured crop takes the others'
            raise EnsembleError(
                f"{name}: crop {crop} differs from {crop_from[1]}'s {crop_from[0]}; "
                "the runtime frames faces one way for the whole ensemble"
            )
        crop_from = crop_from or ((crop, name) if crop else None)
        facts = {"labels": list(labels), "input spec": {k: spec.get(k) for k in INPUT_KEYS}, **signature}
        if first is None:
            first, first_name = facts, name
            continue
        for key, value in facts.items():
            if value != first[key]:
                raise EnsembleError(
                    f"{name}: {key} {value} differs from {first_name}'s {first[key]}; "
                    "ensemble members must share labels, input contract and opsets"
                )


def combine_models(models: Sequence[onnx.ModelProto], weights: Sequence[float]) -> onnx.ModelProto:
    """One graph: each member prefixed ``member{i}_`` and fed from the shared input; output = sum w_i * probs_i.

    Every member is prefixed whole (its input too) and an Identity feeds it from the shared input, which
    avoids relying on onnx.compose's edge-renaming rules that changed between onnx versions.
    """
    shared_input = onnx.ValueInfoProto()
    shared_input.CopyFrom(real_inputs(models[0].graph)[0])
    input_name = shared_input.name
    batch = shared_input.type.tensor_type.shape.dim[0]
    classes = tensor_dims(models[0].graph.output[0])[1]

    nodes, initializers, sparse, value_info, functions, member_outputs = [], [], [], [], [], []
    for i, model in enumerate(models):
        prefixed = onnx.compose.add_prefix(model, f"member{i}_")
        graph = prefixed.graph
        nodes.append(
            helper.make_node("Identity", [input_name], [real_inputs(graph)[0].name], name=f"member{i}_feed")
        )
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        sparse.extend(graph.sparse_initializer)
        value_info.extend(graph.value_info)
        functions.extend(prefixed.functions)
        member_outputs.append(graph.output[0].name)

    if len(set(weights)) == 1:  # equal weights: Mean, no constants
        nodes.append(helper.make_node("Mean", member_outputs, [OUTPUT_NAME], name="ensemble_mean"))
    else:
        for i, (name, weight) in enumerate(zip(member_outputs, weights)):
            initializers.append(
                numpy_helper.from_array(np.array(weight, dtype=np.float32), f"ensemble_weight{i}")
            )
            nodes.append(
                helper.make_node(
                    "Mul",
                    [name, f"ensemble_weight{i}"],
                    [f"ensemble_weighted{i}"],
                    name=f"ensemble_weight{i}_mul",
                )
            )
        nodes.append(
            helper.make_node(
                "Sum",
                [f"ensemble_weighted{i}" for i in range(len(models))],
                [OUTPUT_NAME],
                name="ensemble_sum",
            )
        )

    output = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [None, classes])
    output.type.tensor_type.shape.dim[0].CopyFrom(batch)  # the same symbolic batch as the input
    graph = helper.make_graph(
        nodes,
        "emotion_ensemble",
        [shared_input],
        [output],
        initializers,
        sparse_initializer=sparse,
        value_info=value_info,
    )
    opsets = {}
    for model in models:
        opsets.update({o.domain: o.version for o in model.opset_import})
    combined = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        functions=functions,
        producer_name="emotion-train ensemble",
    )
    combined.ir_version = max(m.ir_version for m in models)
    onnx.checker.check_model(combined)
    return combined


def write_ensemble(
    members: Sequence[Path],
    out: Path,
    check_images: np.ndarray,
    weights: Sequence[float] | None = None,
    cards: Sequence[dict] | None = None,
) -> dict:
    """Write ``out`` atomically once the combined graph reproduces the weighted mean of its members.

    ``cards`` default to the model.json beside each member; both the graphs and the cards are checked.
    Raises EnsembleError (and writes nothing) when members disagree or parity exceeds PARITY_TOLERANCE.
    """
    members = [Path(m) for m in members]
    names = [str(m) for m in members]
    weights = normalised_weights(weights, len(members))
    if cards is None:
        cards = [_read_json(m.with_suffix(".json")) for m in members]
    models = [onnx.load(str(m)) for m in members]
    check_members(models, cards, names)
    combined = combine_models(models, weights)

    check_images = np.asarray(check_images, dtype=np.float32)
    member_probs = np.stack([onnx_probabilities(m, check_images) for m in members]).astype(np.float64)
    expected = np.tensordot(np.asarray(weights), member_probs, axes=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".tmp.onnx") as pending:  # replaces `out` only if the block completes
        onnx.save(combined, str(pending.path))
        got = onnx_probabilities(pending.path, check_images)
        max_diff = float(np.max(np.abs(got - expected)))
        if not max_diff <= PARITY_TOLERANCE:
            raise EnsembleError(
                f"{out}: the combined graph differs from the members' weighted mean by "
                f"{max_diff:.3e} > {PARITY_TOLERANCE}; nothing written"
            )
    log.info(
        "wrote %s: %d members, max |ensemble - weighted mean| = %.2e on %d images",
        out,
        len(members),
        max_diff,
        len(check_images),
    )
    return {
        "max_abs_diff": max_diff,
        "tolerance": PARITY_TOLERANCE,
        "images": len(check_images),
        "argmax_agreement": float(np.mean(got.argmax(1) == expected.argmax(1))),
        "opset": next((o.version for o in combined.opset_import if o.domain in ("", "ai.onnx")), None),
        "combination": "mean" if len(set(weights)) == 1 else "weighted sum (weights sum to 1)",
    }


# --- the `emotion-train ensemble` step: members' run folders -> OUT_DIR with model, card, metrics ----------
def _check_images(members: list[Member], splits: dict, size: int) -> tuple[np.ndarray, str]:
    """Real faces when we have them: a given split, else a member's stored parity images, else noise."""
    if splits:
        name, ds = next(iter(splits.items()))
        return ds.images[:PARITY_IMAGES][..., None].astype(np.float32), f"{name} split, first {PARITY_IMAGES}"
    for m in members:
        stored = m.run_dir / "checkpoints" / "parity_images.npy"
        if stored.is_file():
            images = np.load(stored)
            if images.shape[1:] == (size, size):
                return images[..., None].astype(np.float32), f"{stored}"
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (PARITY_IMAGES, size, size, 1)).astype(np.float32), "uniform noise, seed 0"


def _versions() -> dict[str, str]:
    versions = {}
    for name in ("onnx", "onnxruntime", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def ensemble_run(
    run_dirs: Sequence[Path],
    out_dir: Path,
    weights: Sequence[float] | None = None,
    val: tuple[Path, str | None] | None = None,
    test: tuple[Path, str | None] | None = None,
    command: list[str] | None = None,
) -> tuple[dict, dict]:
    """Combine the runs into OUT_DIR/model.onnx, evaluate it on the given splits, write metrics and card.

    Returns the metrics (as in metrics.json) and the parity figures (as in the card's ``export``).
    """
    from . import evaluate as ev
    from .data import load_folder

    members = [Member.load(d) for d in run_dirs]
    weights = normalised_weights(weights, len(members))
    first = members[0].card
    size = int(first["input"]["height"])
    # Check the members before decoding any data, so a bad member fails fast.
    check_members(
        [onnx.load(str(m.onnx)) for m in members],
        [m.card for m in members],
        [str(m.run_dir) for m in members],
    )
    splits = {
        name: load_folder(Path(spec[0]), size, spec[1], labels=list(first["labels"]))
        for name, spec in (("val", val), ("test", test))
        if spec
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    images, source = _check_images(members, splits, size)
    parity = write_ensemble(
        [m.onnx for m in members], out_dir / "model.onnx", images, weights, cards=[m.card for m in members]
    )
    parity["check_images"] = source

    results = ev.evaluate_splits(
        out_dir / "model.onnx", splits, list(first["labels"]), out_dir / "plots", "Ensemble confusion matrix"
    )
    write_json_atomic(out_dir / "metrics.json", results)
    write_json_atomic(out_dir / "model.json", _card(members, weights, parity, results, command or []))
    return results, parity


def _shared_data(members: list[Member]) -> dict:
    """The members' training data (folders and sha256) when they all record the same, so the card keeps the
    provenance a single run's card has; each member's own record stays in `members` either way."""
    data = [(m.card.get("training") or {}).get("data") for m in members]
    return {"data": data[0]} if data[0] and all(d == data[0] for d in data) else {}


def _ensemble_input(first: dict, inputs: list[dict]) -> dict:
    """The members' input contract; when their graphs normalise differently, the card names every way."""
    ways = sorted({spec.get("normalise", "fixed") for spec in inputs})
    return first if len(ways) == 1 else {**first, "normalise": " / ".join(ways)}


def _card(
    members: list[Member], weights: list[float], parity: dict, results: dict, command: list[str]
) -> dict:
    """The members' shared contract, plus what each member is and how the whole was measured."""
    first = members[0].card
    backbones = [(m.card.get("backbone") or {}) for m in members]
    names = [b.get("name", "?") if isinstance(b, dict) else str(b) for b in backbones]
    member_tta = [f"{m.run_dir.name}: {m.card.get('tta') or 'none'}" for m in members]
    card = {
        "format": CARD_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "labels": list(first["labels"]),
        "input": _ensemble_input(first["input"], [m.card["input"] for m in members]),
        "output": {"name": OUTPUT_NAME, "kind": "probabilities", "order": "labels"},
        "backbone": {"name": f"ensemble of {len(members)}: {', '.join(names)}", "members": backbones},
        "tta": f"weighted mean of {len(members)} members inside the graph; each member's own TTA: "
        + "; ".join(member_tta),
        "export": parity,
        "metrics": {name: card_metrics(results[name]) for name in ("val", "test") if name in results},
        "members": [
            {
                "run_dir": str(m.run_dir),
                "model_sha256": sha256_file(m.onnx),
                "weight": w,
                "tta": m.card.get("tta"),
                "config": m.config if m.config is not None else (m.card.get("training") or {}).get("config"),
                "metrics": m.card.get("metrics", {}),
            }
            for m, w in zip(members, weights)
        ],
        "training": {
            "command": command,
            "kind": "ensemble of exported runs (no training)",
            "versions": _versions(),
            **_shared_data(members),
        },
    }
    crop = next((m.card["crop"] for m in members if m.card.get("crop")), None)
    if crop:  # the members that have one agree (checked); the runtime frames faces with it
        card["crop"] = crop
    return card
