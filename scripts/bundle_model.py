"""Copy a finished `emotion-train` run into models/, the model that emotion-batch ships and loads by default.

    python scripts/bundle_model.py RUN_DIR [--models models] [--benchmark results.json ...]

RUN_DIR is a training run, or the output of `emotion-train ensemble` / `soup` / `quantize`. Copies
model.onnx, model.json and the small evaluation plots; for an ensemble or a soup, each member's or
ingredient's training curves (training_curves_1.png, ...). Plots of the previous model that the new one
does not have are removed, so no figure describes another model. The card's measured face framing (`crop`, written by
scripts/measure_framing.py) is a property of the training data, not of one run, so it is kept from the
bundled card when the new run's card has none. Each ``--benchmark`` file (the ``--json`` of
scripts/evaluate_model.py) is summarised into the card's ``generalisation`` section, keyed by its split. A run
that started from another run's weights (``--init-from``) gets the chain of those runs' commands in
``training.lineage``, nearest first, so the card alone says how to rebuild the model from scratch; a soup's
ingredients each get their own ``lineage``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emotion_batch.digest import sha256_file
from emotion_train.artifacts import card_path_of, install_file, write_json_atomic

PLOTS = ("confusion_test.png", "confusion_val.png", "training_curves.png")


def benchmark_summary(result: dict) -> dict:
    """The figures of one evaluate_model.py run that a card keeps (no confusion matrix, no per-class table)."""
    keep = (
        "split",
        "cpu",
        "accuracy",
        "macro_f1",
        "ferplus",
        "ms_per_face_batch1_1thread_median",
        "model_mb",
    )
    out = {key: result[key] for key in keep if key in result}
    suite = result.get("robustness") or {}
    out["robustness"] = {
        "mean_accuracy": suite.get("mean_accuracy"),
        "conditions": {name: c["accuracy"] for name, c in suite.get("conditions", {}).items()},
        "detection_rate": {
            name: c["detection_rate"]
            for name, c in suite.get("conditions", {}).items()
            if "detection_rate" in c
        },
    }
    if suite.get("lighting"):  # outside the mean; benchmarks from before session 10 lack it
        out["robustness"]["lighting"] = {name: c["accuracy"] for name, c in suite["lighting"].items()}
    return out


def lineage(run_dir: Path) -> list[dict]:
    """The runs whose weights `run_dir` started from (``--init-from``), nearest first, with their commands."""
    chain: list[dict] = []
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    init_from = config.get("train", {}).get("init_from")
    while init_from:
        if (
            Path(init_from).suffix == ".onnx"
        ):  # an exported model (e.g. the bundled one): its card has the rest
            chain.append(_exported_ancestor(Path(init_from)))
            break
        ancestor = Path(init_from).parent.parent  # RUN/checkpoints/best.keras
        if str(ancestor) in {link["run"] for link in chain}:
            break  # a loop of runs (only by hand-edited configs); each is listed once
        if not (ancestor / "config.json").is_file():
            chain.append({"run": str(ancestor), "missing": True})  # moved or deleted: say so, do not guess
            break
        config = json.loads((ancestor / "config.json").read_text())
        card_path = ancestor / "model.json"
        training = json.loads(card_path.read_text()).get("training", {}) if card_path.is_file() else {}
        chain.append(
            {
                "run": str(ancestor),
                "command": config.get("command"),
                "best_epoch": training.get("best_epoch"),
                "epochs_run": training.get("epochs_run"),
            }
        )
        init_from = config.get("train", {}).get("init_from")
    return chain


def _exported_ancestor(model: Path) -> dict:
    """An exported graph a run started from: its digest, its card's command, and the card's own lineage."""
    card_path = card_path_of(model)
    if not model.is_file() or not card_path.is_file():
        return {"model": str(model), "missing": True}
    training = json.loads(card_path.read_text()).get("training", {})
    link = {
        "model": str(model),
        "sha256": sha256_file(model),
        "command": training.get("command"),
        "best_epoch": training.get("best_epoch"),
        "epochs_run": training.get("epochs_run"),
    }
    if training.get("lineage"):
        link["lineage"] = training["lineage"]
    return link


def bundle(run_dir: Path, models: Path, benchmarks: tuple[Path, ...] = ()) -> dict:
    card = json.loads((run_dir / "model.json").read_text())
    if chain := lineage(run_dir):
        card.setdefault("training", {})["lineage"] = chain
    for ingredient in card.get("ingredients", []):  # a soup (`emotion-train soup`): each run's own chain
        if chain := lineage(Path(ingredient["run_dir"])):
            ingredient["lineage"] = chain
    for path in benchmarks:
        result = json.loads(path.read_text())
        split = result["split"].split()[1]  # "FER-2013 PrivateTest (3589 images)"
        card.setdefault("generalisation", {})[split] = benchmark_summary(result)
    previous_card = models / "model.json"
    if "crop" not in card and previous_card.exists():
        previous = json.loads(previous_card.read_text())
        if "crop" in previous:
            card["crop"] = previous["crop"]
    models.mkdir(parents=True, exist_ok=True)
    install_file(run_dir / "model.onnx", models / "model.onnx")
    plots = {name: run_dir / "plots" / name for name in PLOTS}
    for i, member in enumerate(card.get("members", []) or card.get("ingredients", []), start=1):
        plots[f"training_curves_{i}.png"] = Path(member["run_dir"]) / "plots" / "training_curves.png"
    for stale in models.glob("*.png"):
        if stale.name not in plots or not plots[stale.name].exists():
            stale.unlink()
    for name, source in plots.items():
        if source.exists():
            install_file(source, models / name)
    write_json_atomic(previous_card, card)
    return card


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    parser.add_argument(
        "--benchmark",
        type=Path,
        action="append",
        default=[],
        help="an evaluate_model.py --json file to summarise into the card (repeatable)",
    )
    args = parser.parse_args()
    card = bundle(args.run_dir, args.models, tuple(args.benchmark))
    metrics = card.get("metrics", {})
    for split, m in metrics.items():
        print(f"{split}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} ({m['split']})")
    print(f"bundled {args.run_dir / 'model.onnx'} -> {args.models}")


if __name__ == "__main__":
    main()
