"""The three separate steps of a run (train, export, evaluate) and the model card they leave behind.

Each step reads what it needs from RUN_DIR, so ``export`` and ``evaluate`` also work on a run that was
trained on another machine, and a killed ``train`` continues with ``--resume``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from emotion_batch.digest import sha256_file

from . import evaluate as ev
from .artifacts import card_path_of, framing_of, write_json_atomic
from .data import (
    Dataset,
    DatasetError,
    class_folders,
    list_images,
    load_folder,
    stratified_split,
    typical_side,
)
from .train import RunDir, TrainConfig, fit

log = logging.getLogger(__name__)

CARD_FORMAT = "emotion-batch-model/1"
PARITY_IMAGES = 256


@dataclass(frozen=True)
class DataSpec:
    """A split: a class-folder dataset, optionally narrowed by a file-name glob (FER-2013's test folder holds
    both PublicTest_* and PrivateTest_* images)."""

    path: str
    pattern: str | None = None

    def describe(self) -> str:
        return f"{self.path} [{self.pattern}]" if self.pattern else self.path


@dataclass(frozen=True)
class RunConfig:
    train: TrainConfig
    data: DataSpec
    val: DataSpec | None
    val_split: float
    test: DataSpec | None
    flip_tta: bool
    command: list[str]

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["train"] = self.train.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        def spec(d: dict | None) -> DataSpec | None:
            return DataSpec(**d) if d else None

        return cls(
            train=TrainConfig.from_dict(data["train"]),
            data=DataSpec(**data["data"]),
            val=spec(data.get("val")),
            val_split=data["val_split"],
            test=spec(data.get("test")),
            flip_tta=data["flip_tta"],
            command=data["command"],
        )


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in (
        "tensorflow",
        "keras",
        "tf2onnx",
        "onnx",
        "onnxruntime",
        "numpy",
        "opencv-python-headless",
        "jax",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def resolve_from_data(config: RunConfig) -> RunConfig:
    """Fix what the data decides: the number of classes, and the stored resolution when left to 'auto' (0)."""
    root = Path(config.data.path)
    classes = class_folders(root)
    model = dataclasses.replace(config.train.model, num_classes=len(classes))
    if not model.image_size:
        entries = list_images(root, classes, config.data.pattern)
        side = min(typical_side(root, [rel for rel, _ in entries]), model.input_size)
        log.info("%s: images are typically %d px; storing them at %d px", root, side, side)
        model = dataclasses.replace(model, image_size=side)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, model=model))


def load_splits(config: RunConfig) -> dict[str, Dataset]:
    """train / val / (test) datasets, with the class sets checked against the training folder."""
    size = config.train.model.image_size
    full = load_folder(Path(config.data.path), size, config.data.pattern)
    if config.val:
        train = full
        val = load_folder(Path(config.val.path), size, config.val.pattern, labels=full.labels)
    else:
        train, val = stratified_split(full, config.val_split, config.train.seed)
    splits = {"train": train, "val": val}
    if config.test:
        splits["test"] = load_folder(Path(config.test.path), size, config.test.pattern, labels=full.labels)
    for name, ds in splits.items():
        log.info("%s: %d images from %s %s", name, len(ds), ds.root, ds.class_counts())
    if full.skipped:
        log.warning(
            "%d unreadable training images were skipped (listed in the log and metrics.json)",
            len(full.skipped),
        )
    return splits


def _differences(stored: dict, given: dict, prefix: str = "") -> list[str]:
    """'name: stored -> given' for every setting that differs (the command line itself excepted)."""
    out = []
    for key in sorted(set(stored) | set(given)):
        if key == "command":
            continue
        a, b = stored.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def start_run(config: RunConfig, run: RunDir, resume: bool) -> RunConfig:
    """Create RUN_DIR for a new run, or load the stored config of the run being resumed.

    A folder whose run never finished an epoch holds nothing to keep: a new start (with or without
    --resume) replaces its configuration instead of refusing or silently reusing it.
    """
    trained = run.load_state().epochs_done > 0
    if resume and not run.config.exists():
        raise DatasetError(f"{run.root}: nothing to resume (no config.json); start without --resume")
    if run.config.exists() and not trained:
        log.warning(
            "%s: the earlier run stopped before its first epoch; starting again with this configuration",
            run.root,
        )
    elif resume:
        stored = RunConfig.from_dict(json.loads(run.config.read_text()))
        if stored.data.path != config.data.path:
            raise DatasetError(
                f"{run.root}: this run was trained on {stored.data.path}, not {config.data.path}; "
                "resume it with the same DATA_DIR"
            )
        changed = _differences(stored.to_dict(), resolve_from_data(config).to_dict())
        log.info("resuming %s with its stored configuration", run.root)
        if changed:
            log.warning(
                "--resume keeps the stored settings; these options of this command are ignored: %s",
                "; ".join(changed),
            )
        return stored
    elif run.config.exists():
        raise DatasetError(
            f"{run.root}: already holds a training run; pass --resume to continue it, or choose a new --out"
        )
    config = resolve_from_data(config)
    write_json_atomic(run.config, config.to_dict())
    return config


def train_run(config: RunConfig, run_root: Path, resume: bool, verbose: int = 1) -> dict:
    """The whole job: train (or resume), export with a parity check, evaluate, plot and write the card."""
    run = RunDir(run_root)
    run.root.mkdir(parents=True, exist_ok=True)
    config = start_run(config, run, resume)
    splits = load_splits(config)
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    np.save(run.checkpoints / "parity_images.npy", splits["val"].images[:PARITY_IMAGES])
    _plot_data(splits, run)
    started = time.monotonic()
    state = fit(config.train, run, splits["train"], splits["val"], verbose=verbose)
    log.info("training done in %.0f s this session", time.monotonic() - started)
    against = "the vote-blended targets" if config.train.labels else "the folder labels"
    log.info(
        "best epoch %d: val accuracy %.4f as Keras measured it during training (against %s%s); the "
        "exported model's figures below are against the folder labels%s",
        state.best_epoch,
        state.best_val_accuracy,
        against,
        ", no flip TTA" if config.flip_tta else "",
        ", with flip TTA" if config.flip_tta else "",
    )
    export_run(run.root)
    return evaluate_run(run.root, splits=splits)


def _plot_data(splits: dict[str, Dataset], run: RunDir) -> None:
    run.plots.mkdir(parents=True, exist_ok=True)
    ev.plot_class_distribution(splits, run.plots / "class_distribution.png")
    ev.plot_samples(splits["train"], run.plots / "samples.png")


def export_run(run_root: Path, flip_tta: bool | None = None) -> dict:
    """best.keras -> model.onnx, verified against Keras on stored real validation images."""
    from .export import export_onnx
    from .model import load_classifier

    run = RunDir(run_root)
    config = RunConfig.from_dict(json.loads(run.config.read_text()))
    if not run.best.exists():
        raise DatasetError(f"{run.best}: no trained checkpoint to export; train first")
    tta = config.flip_tta if flip_tta is None else flip_tta
    classifier = load_classifier(run.best)
    images = np.load(run.checkpoints / "parity_images.npy")[..., None].astype(np.float32)
    parity = export_onnx(classifier, run.onnx, images, flip_tta=tta)
    write_json_atomic(
        run.root / "export.json", {"parity": parity, "parameters": int(classifier.count_params())}
    )
    return parity


def evaluate_run(
    run_root: Path, test: DataSpec | None = None, splits: dict[str, Dataset] | None = None
) -> dict:
    """Measure the exported ONNX model exactly as the runtime runs it; write metrics.json, plots and card."""
    run = RunDir(run_root)
    config = RunConfig.from_dict(json.loads(run.config.read_text()))
    if test is not None:
        config = dataclasses.replace(config, test=test)
    if splits is None or (test is not None):
        splits = load_splits(config)
    evaluated: dict[str, Dataset] = {name: splits[name] for name in ("val", "test") if name in splits}
    results = ev.evaluate_splits(
        run.onnx, evaluated, splits["train"].labels, run.plots, "Confusion matrix", roc=True
    )
    state = run.load_state()
    ev.plot_history(state.history, run.plots / "training_curves.png")
    results["skipped_images"] = {n: [list(s) for s in ds.skipped] for n, ds in splits.items() if ds.skipped}
    write_json_atomic(run.metrics, results)
    card = build_card(run, config, splits, results)
    write_json_atomic(run.card, card)
    if "crop" not in card:
        data = Path(splits["train"].root)
        log.warning(
            "%s has no crop: emotion-batch will frame detected faces by its default, not as these training "
            "images are framed; measure their framing with: python scripts/measure_framing.py --fer %s "
            "--split %s --card %s",
            run.card,
            data.parent,
            data.name,
            run.card,
        )
    elif "inherited_from" in card["crop"]:
        log.info("crop framing from %s, trained on the same images", card["crop"]["inherited_from"])
    return results


def build_card(run: RunDir, config: RunConfig, splits: dict[str, Dataset], results: dict) -> dict:
    """What the runtime and a reader need: labels, input contract, metrics with splits, and provenance."""
    state = run.load_state()
    export = json.loads((run.root / "export.json").read_text())
    model = config.train.model
    previous = json.loads(run.card.read_text()) if run.card.exists() else {}

    weights = model.weights
    weights_info = {"source": weights}
    if weights not in ("imagenet", "none") and Path(weights).is_file():
        weights_info["sha256"] = sha256_file(Path(weights))
    card = {
        "format": CARD_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "labels": splits["train"].labels,
        "input": {
            "name": "image",
            "height": model.image_size,
            "width": model.image_size,
            "channels": 1,
            "dtype": "float32",
            "range": [0, 255],
            "layout": "NHWC",
            "note": "greyscale face crop resized to height x width; scaling and normalisation happen in the graph",
            "normalise": model.normalise,  # in the graph: "fixed" 0-255 to [-1, 1], or "per-image" contrast
        },
        "output": {"name": "probs", "kind": "probabilities", "order": "labels"},
        "backbone": {
            "name": model.backbone,
            "alpha": model.alpha,
            "input_size": model.input_size,
            "weights": weights_info,
            "parameters": export.get("parameters"),
        },
        "tta": "horizontal flip, averaged inside the graph" if export["parity"]["flip_tta"] else None,
        "export": export["parity"],
        "metrics": {name: ev.card_metrics(results[name]) for name in ("val", "test") if name in results},
        "training": {
            "command": config.command,
            "config": config.train.to_dict(),
            "seed": config.train.seed,
            "epochs_run": state.epochs_done,
            "best_epoch": state.best_epoch,
            "stopped_early": state.stopped_early,
            "train_seconds": round(state.seconds, 1),
            "data": {
                name: {
                    "path": str(ds.root),
                    "pattern": ds.pattern,
                    "sha256": ds.content_hash,
                    "images": len(ds),
                    "class_counts": ds.class_counts(),
                    "skipped_unreadable": len(ds.skipped),
                }
                for name, ds in splits.items()
            },
            "versions": library_versions(),
        },
    }
    if config.train.teacher:
        card["training"]["teacher"] = {
            "path": config.train.teacher,
            "weight": config.train.teacher_weight,
            "sha256": sha256_file(Path(config.train.teacher)),
            "online": config.train.online_teacher,
        }
    if config.train.labels:
        card["training"]["labels"] = {
            "votes": config.train.labels,
            "label_weight": config.train.label_weight,
            "sha256": sha256_file(Path(config.train.labels)),
        }
    card["training"]["augmentation"] = config.train.augment_config().to_dict()
    if "crop" in previous:  # measured framing (scripts/measure_framing.py) survives re-export
        card["crop"] = previous["crop"]
    elif crop := inherited_crop((config.train.init_from, config.train.teacher), splits["train"]):
        card["crop"] = crop
    return card


def inherited_crop(sources: tuple[str | None, ...], train: Dataset) -> dict | None:
    """The measured framing of a network a run learnt from, when that network was trained on the same images.

    Framing is a property of the training images, not of the weights: a run fine-tuned from the bundled model
    on FER-2013 frames faces as the bundled model does, and without the card's `crop` the runtime would frame
    them by its default (6 to 9 points lower on PublicTest faces found in a larger frame). `sources` are the
    run's start (``--init-from``) and its teacher, in that order; the first whose card has a crop and was
    trained on `train` gives it. So a run from ImageNet weights takes the crop of a teacher trained on the same
    images; a run on other images gets none, and `evaluate_run` then says how to measure one.
    """
    for source in sources:
        if not source:
            continue
        card_path = card_path_of(Path(source))
        if not card_path.is_file():
            continue
        card = json.loads(card_path.read_text())
        framing = framing_of(card)
        if framing and trained_on(card) == {train.content_hash}:
            return {**framing, "inherited_from": str(card_path)}
    return None


def trained_on(card: dict) -> set[str]:
    """The content hashes of the training images behind a card; empty when they cannot be known.

    An ensemble's card (`emotion-train ensemble`) records no training data of its own, only where each member's
    run lies, so its images are its members'; one member whose card cannot be read makes them unknown.
    """
    own = card.get("training", {}).get("data", {}).get("train", {}).get("sha256")
    if own:
        return {own}
    hashes: set[str] = set()
    for member in card.get("members", []):
        run_dir = member.get("run_dir")
        member_card = Path(run_dir) / "model.json" if run_dir else None
        if member_card is None or not member_card.is_file():
            return set()
        member_hashes = trained_on(json.loads(member_card.read_text()))
        if not member_hashes:
            return set()
        hashes |= member_hashes
    return hashes
