"""Weight averaging ("model soup"): one network whose weights are the weighted mean of several trained runs.

Runs fine-tuned from the same starting weights (``--init-from`` the same checkpoint, or one from the other)
tend to lie in one basin of the loss, where the average of their weights is itself a good network, often a
little better than each of them. It costs one network per face, where an ensemble of the same runs
(`emotion-train ensemble`) costs all of them. Runs trained from unrelated starts do not average (their units
are not aligned), and nothing here can tell: judge a soup by its validation figures, which
`emotion-train soup` prints and the card keeps next to each ingredient's.

Every weight is averaged, batch-norm statistics included (they are not re-estimated on training data). The
soup is saved as a Keras checkpoint (``checkpoints/best.keras``, so it can be re-exported or fine-tuned with
``--init-from``) and exported to ONNX with the same parity check as a trained run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from emotion_batch.digest import sha256_file

from .artifacts import framing_of, write_json_atomic
from .config import ModelConfig
from .data import load_folder
from .ensemble import CARD_FORMAT, PARITY_IMAGES, normalised_weights
from .evaluate import card_metrics
from .export import OUTPUT_NAME
from .train import RunDir
from .workflow import RunConfig, library_versions

#: What an ingredient's network must share with the others for their weights to be averaged.
ARCHITECTURE = ("backbone", "alpha", "image_size", "input_size", "num_classes")


class SoupError(ValueError):
    """Runs whose weights cannot be averaged; nothing written."""


def _ingredient(run_dir: Path) -> tuple[RunDir, RunConfig, dict]:
    run = RunDir(Path(run_dir).resolve())
    for path in (run.best, run.config, run.card):
        if not path.is_file():
            raise SoupError(
                f"{run.root}: no {path.relative_to(run.root)}; a soup needs finished training runs"
            )
    return run, RunConfig.from_dict(json.loads(run.config.read_text())), json.loads(run.card.read_text())


def _check_ingredients(ingredients: list[tuple[RunDir, RunConfig, dict]]) -> None:
    """Same architecture, classes, input contract, framing and TTA: else averaging means nothing."""
    first_run, first_config, first_card = ingredients[0]
    for run, config, card in ingredients[1:]:
        for key in ARCHITECTURE:
            a, b = getattr(first_config.train.model, key), getattr(config.train.model, key)
            if a != b:
                raise SoupError(
                    f"{run.root}: {key} {b!r} differs from {first_run.root}'s {a!r}; only runs of one "
                    "architecture can be averaged"
                )
        for key in ("labels", "input"):
            if card.get(key) != first_card.get(key):
                raise SoupError(f"{run.root}: its card's {key} differs from {first_run.root}'s")
        if framing_of(card) != framing_of(first_card):
            raise SoupError(f"{run.root}: its card's crop differs from {first_run.root}'s")
        if config.flip_tta != first_config.flip_tta:
            raise SoupError(f"{run.root}: flip TTA {config.flip_tta} differs from {first_run.root}'s")


def average_weights(weight_lists: Sequence[list[np.ndarray]], weights: Sequence[float]) -> list[np.ndarray]:
    """The weighted mean of each tensor across the lists (one list per network, in the same order)."""
    shapes = [[w.shape for w in weights_of] for weights_of in weight_lists]
    if any(s != shapes[0] for s in shapes[1:]):
        raise SoupError("the runs' weight tensors differ in number or shape; they are not the same network")
    averaged = []
    for i, first in enumerate(weight_lists[0]):
        total = np.zeros(first.shape, dtype=np.float64)
        for share, tensors in zip(weights, weight_lists):
            total += share * tensors[i].astype(np.float64)
        averaged.append(total.astype(first.dtype))
    return averaged


def soup_run(
    run_dirs: Sequence[Path],
    out_dir: Path,
    weights: Sequence[float] | None = None,
    val: tuple[Path, str | None] | None = None,
    test: tuple[Path, str | None] | None = None,
    command: list[str] | None = None,
) -> tuple[dict, dict]:
    """Average the runs' best checkpoints into OUT_DIR (checkpoints/best.keras, model.onnx, model.json,
    metrics.json, plots). Returns the metrics and the export parity figures."""
    from . import evaluate as ev
    from .export import export_onnx
    from .model import load_classifier
    from .train import save_model_atomic

    ingredients = [_ingredient(d) for d in run_dirs]
    shares = normalised_weights(weights, len(ingredients))
    _check_ingredients(ingredients)
    first_run, first_config, first_card = ingredients[0]
    model: ModelConfig = first_config.train.model
    labels = list(first_card["labels"])
    networks = [load_classifier(run.best) for run, _, _ in ingredients]
    soup = networks[0]
    soup.set_weights(average_weights([n.get_weights() for n in networks], shares))

    splits = {
        name: load_folder(Path(spec[0]), model.image_size, spec[1], labels=labels)
        for name, spec in (("val", val), ("test", test))
        if spec
    }
    if "val" in splits:
        check = splits["val"].images[:PARITY_IMAGES]
        checked_on = f"val split, first {len(check)}"
    else:
        check = np.load(first_run.checkpoints / "parity_images.npy")
        checked_on = str(first_run.checkpoints / "parity_images.npy")
    out = RunDir(Path(out_dir))
    out.checkpoints.mkdir(parents=True, exist_ok=True)
    save_model_atomic(soup, out.best)
    parity = export_onnx(soup, out.onnx, check[..., None].astype(np.float32), flip_tta=first_config.flip_tta)
    parity["check_images"] = checked_on
    results = ev.evaluate_splits(out.onnx, splits, labels, out.plots, "Soup confusion matrix")
    write_json_atomic(out.metrics, results)
    card = {
        "format": CARD_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "labels": labels,
        "input": first_card["input"],
        "output": {"name": OUTPUT_NAME, "kind": "probabilities", "order": "labels"},
        "backbone": {**first_card["backbone"], "parameters": int(soup.count_params())},
        "tta": first_card.get("tta"),
        "export": parity,
        "metrics": {name: card_metrics(results[name]) for name in ("val", "test") if name in results},
        "ingredients": [
            {
                "run_dir": str(run.root),
                "checkpoint_sha256": sha256_file(run.best),
                "weight": share,
                "command": config.command,
                "best_epoch": card.get("training", {}).get("best_epoch"),
                "metrics": card.get("metrics", {}),
            }
            for (run, config, card), share in zip(ingredients, shares)
        ],
        "training": {
            "command": list(command or []),
            "kind": f"weighted average of the weights of {len(ingredients)} trained runs (no training); batch-norm "
                    "statistics averaged too",
            "versions": library_versions(),
        },
    }  # fmt: skip
    data = [c.get("training", {}).get("data") for _, _, c in ingredients]
    if data[0] and all(d == data[0] for d in data):
        card["training"]["data"] = data[0]
    if first_card.get("crop"):
        card["crop"] = first_card["crop"]  # all ingredients agree (checked)
    write_json_atomic(out.card, card)
    return results, parity
