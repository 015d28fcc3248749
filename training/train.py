"""Two-stage transfer learning with checkpoints that a killed run resumes from exactly.

Stage 1 trains the head on a frozen backbone; stage 2 fine-tunes the backbone (all of it, or its top
layers) at a lower, cosine-decayed learning rate. After every epoch the whole training model (weights,
optimiser slots, iteration counter and therefore the schedule position) is saved, and only then does
``state.json`` move forward: the state file is the commit point, so a kill at any moment leaves a
consistent checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from emotion_batch.digest import sha256_file
from emotion_batch.files import atomic_file, atomic_path

from .artifacts import write_json_atomic
from .augment import AugmentConfig, augment_batch, batch_rng
from .data import Dataset, class_weights
from .distill import (
    CACHE_NAME,
    ONLINE_RECORD_NAME,
    Teacher,
    blend_targets,
    cached_teacher_probabilities,
    fit_to_input,
    pin_teacher,
)
from .labels import read_votes, soft_targets
from .model import (
    ModelConfig,
    WeightsUnavailable,
    backbone_of,
    build_classifier,
    build_training_model,
    classifier_of,
    load_classifier,
    set_trainable,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    epochs: int = 30  # total, both stages
    head_epochs: int = 3  # stage 1; 0 skips it (always skipped when training from scratch)
    batch_size: int = 64
    head_lr: float = 1e-3
    lr: float = 5e-4  # stage-2 peak, after warm-up
    warmup_epochs: int = 1
    weight_decay: float = 1e-4
    fine_tune_layers: int = 0  # 0 = the whole backbone
    label_smoothing: float = 0.1
    class_weight: str = "sqrt"
    augment: float = 1.0  # strength of the geometric augmentation; 0 = no augmentation at all
    erasing: float = 0.0  # probability of blanking a random patch with noise (occlusion robustness)
    augmentation: dict | None = None  # AugmentConfig fields overriding its defaults (strength/erasing above)
    labels: str | None = None  # a votes CSV (multi-rater soft labels); see training/labels.py
    label_weight: float = 0.0  # share of each voted target that stays the folder's one-hot label
    init_from: str | None = (
        None  # a run's best.keras or an exported model.onnx to start from (same architecture)
    )
    patience: int = 8  # epochs without a better val accuracy before stage 2 stops
    seed: int = 42
    teacher: str | None = None  # an exported model.onnx whose probabilities join the targets (distillation)
    teacher_weight: float = 0.5  # share of each target that comes from the teacher
    online_teacher: bool = False  # run the teacher on every augmented batch instead of once on clean images

    def augment_config(self) -> AugmentConfig:
        fields = dict(self.augmentation or {})
        fields.update(strength=self.augment, erasing=self.erasing)
        return AugmentConfig.from_dict(fields)

    @property
    def stage1_epochs(self) -> int:
        return 0 if self.model.weights == "none" else min(self.head_epochs, self.epochs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        data = dict(data)
        data["model"] = ModelConfig(**data["model"])
        return cls(**data)


@dataclass
class RunState:
    """Progress of a run; written atomically after each epoch's checkpoint."""

    epochs_done: int = 0
    checkpoint: str | None = None  # name of the latest checkpoint under checkpoints/ (weights + optimiser)
    checkpoint_stage: int = 0
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    wait: int = 0
    stopped_early: bool = False
    finished: bool = False
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


class RunDir:
    """Names of everything a run writes, in one place."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.plots = self.root / "plots"

    config = property(lambda self: self.root / "config.json")
    state = property(lambda self: self.checkpoints / "state.json")
    best = property(lambda self: self.checkpoints / "best.keras")
    history_csv = property(lambda self: self.root / "history.csv")
    history_json = property(lambda self: self.root / "history.json")
    log_file = property(lambda self: self.root / "train.log")
    onnx = property(lambda self: self.root / "model.onnx")
    card = property(lambda self: self.root / "model.json")
    metrics = property(lambda self: self.root / "metrics.json")

    def load_state(self) -> RunState:
        if not self.state.exists():
            return RunState()
        return RunState(**json.loads(self.state.read_text()))

    def save_state(self, state: RunState) -> None:
        write_json_atomic(self.state, dataclasses.asdict(state))


def save_model_atomic(model: keras.Model, path: Path) -> None:
    with atomic_path(path, suffix=".tmp.keras") as pending:  # Keras wants the .keras suffix
        model.save(pending.path)


def save_checkpoint(model: keras.Model, checkpoints: Path, name: str) -> None:
    """Weights plus every optimiser variable (slots, iteration count and so the schedule position).

    The training model is rebuilt from the run's config on resume rather than deserialised, so the
    checkpoint does not depend on every augmentation layer surviving a Keras config round trip.
    """
    with atomic_path(checkpoints / f"{name}.weights.h5", suffix=".tmp.weights.h5") as pending:
        model.save_weights(pending.path)  # Keras wants the .weights.h5 suffix
    optimizer_vars = {
        f"v{i:04d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.optimizer.variables)
    }
    with atomic_file(checkpoints / f"{name}.optimizer.npz", suffix=".tmp.npz") as handle:
        np.savez(handle, **optimizer_vars)


def load_checkpoint(model: keras.Model, checkpoints: Path, name: str) -> None:
    """Inverse of save_checkpoint, on a model built and compiled exactly as when it was saved."""
    model.load_weights(checkpoints / f"{name}.weights.h5")
    model.optimizer.build(model.trainable_variables)
    with np.load(checkpoints / f"{name}.optimizer.npz", allow_pickle=False) as saved:
        values = [saved[f"v{i:04d}"] for i in range(len(saved.files))]
    variables = model.optimizer.variables
    if len(values) != len(variables):
        raise RuntimeError(
            f"{checkpoints / name}: optimiser checkpoint has {len(values)} variables, the model needs "
            f"{len(variables)}; was the run's config changed?"
        )
    for variable, value in zip(variables, values):
        variable.assign(value)


def delete_checkpoint(checkpoints: Path, name: str) -> None:
    for suffix in (".weights.h5", ".optimizer.npz"):
        (checkpoints / f"{name}{suffix}").unlink(missing_ok=True)


def as_inputs(dataset: Dataset) -> np.ndarray:
    """uint8 [N, S, S] -> float32 [N, S, S, 1] in 0-255, the model's input contract."""
    return dataset.images[..., None].astype(np.float32)


def one_hot(targets: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[targets]


def _teacher_path(config: TrainConfig) -> Path:
    if config.teacher is None:
        raise ValueError("distillation needs a teacher model (--teacher)")
    return Path(config.teacher)


def distillation_targets(config: TrainConfig, run: RunDir, train: Dataset, labels: np.ndarray) -> np.ndarray:
    """One-hot labels blended with the teacher's probabilities, cached in the run for an exact resume."""
    teacher = _teacher_path(config)
    probs = cached_teacher_probabilities(
        teacher,
        sha256_file(teacher),
        train.images,
        train.content_hash,
        train.labels,
        run.checkpoints / CACHE_NAME,
    )
    log.info(
        "teacher %s: agrees with the labels on %.1f%% of the training images; targets are %.0f%% teacher",
        teacher,
        100 * float(np.mean(probs.argmax(axis=1) == train.targets)),
        100 * config.teacher_weight,
    )
    return blend_targets(labels, probs, config.teacher_weight)


def online_teacher(config: TrainConfig, run: RunDir, train: Dataset) -> Teacher:
    """The teacher that AugmentedBatches runs on each augmented batch, its file pinned for --resume."""
    teacher = _teacher_path(config)
    pin_teacher(teacher, sha256_file(teacher), run.checkpoints / ONLINE_RECORD_NAME)
    log.info(
        "teacher %s runs on every augmented batch (online); targets are %.0f%% teacher",
        teacher,
        100 * config.teacher_weight,
    )
    return Teacher(teacher, train.labels)


def _optimizer(config: TrainConfig, stage: int, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Constant LR for the head; warm-up then cosine decay for fine-tuning, keyed on the iteration count."""
    if stage == 1:
        return keras.optimizers.AdamW(learning_rate=config.head_lr, weight_decay=config.weight_decay)
    stage2_epochs = max(1, config.epochs - config.stage1_epochs)
    warmup = min(config.warmup_epochs, stage2_epochs - 1) * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.lr * 0.1,
        decay_steps=max(1, stage2_epochs * steps_per_epoch - warmup),
        alpha=0.01,
        warmup_target=config.lr if warmup else None,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)


def _compile(model: keras.Model, config: TrainConfig, stage: int, steps_per_epoch: int) -> None:
    model.compile(
        optimizer=_optimizer(config, stage, steps_per_epoch),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves last/best checkpoints, the history and the state after each epoch; applies early stopping."""

    def __init__(self, run: RunDir, state: RunState, stage: int, patience: int):
        super().__init__()
        self.run, self.state, self.stage, self.patience = run, state, stage, patience
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        seconds = time.monotonic() - self._started
        state = self.state
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        iterations = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        state.history.append(
            {
                "epoch": epoch + 1,
                "stage": self.stage,
                "lr": lr,
                "iterations": iterations,
                "seconds": seconds,
                **logs,
            }
        )
        val_accuracy = logs.get("val_accuracy", -1.0)
        if val_accuracy > state.best_val_accuracy:
            state.best_val_accuracy, state.best_epoch, state.wait = val_accuracy, epoch + 1, 0
            save_model_atomic(classifier_of(self.model), self.run.best)
        else:
            state.wait += 1

        name = f"last-epoch{epoch + 1:03d}"
        save_checkpoint(self.model, self.run.checkpoints, name)
        previous = state.checkpoint
        state.epochs_done, state.checkpoint, state.checkpoint_stage = epoch + 1, name, self.stage
        state.seconds += seconds
        if self.stage == 2 and self.patience and state.wait >= self.patience:
            state.stopped_early = True
            self.model.stop_training = True
        self.run.save_state(state)  # the commit point
        if previous and previous != name:
            delete_checkpoint(self.run.checkpoints, previous)
        _write_history(self.run, state.history)
        log.info(
            "epoch %d (stage %d) %.0fs: loss %.4f acc %.4f | val_loss %.4f val_acc %.4f | lr %.2e%s",
            epoch + 1,
            self.stage,
            seconds,
            logs.get("loss", math.nan),
            logs.get("accuracy", math.nan),
            logs.get("val_loss", math.nan),
            val_accuracy,
            lr,
            " (best)" if state.best_epoch == epoch + 1 else "",
        )
        if state.stopped_early:
            log.info("early stop: no better val accuracy for %d epochs", self.patience)


def _write_history(run: RunDir, history: list[dict]) -> None:
    write_json_atomic(run.history_json, {"history": history})
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys) for row in history]
    with atomic_file(run.history_csv, "w") as handle:
        handle.write("\n".join(lines) + "\n")


class AugmentedBatches(keras.utils.PyDataset):
    """One epoch of shuffled, augmented batches; the order and every draw depend only on (seed, epoch).

    With a ``teacher`` (online distillation) each batch's targets are blended with the teacher's
    probabilities on the augmented images themselves.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        weights: np.ndarray,
        batch_size: int,
        augment: AugmentConfig,
        seed: int,
        teacher: Teacher | None = None,
        teacher_weight: float = 0.0,
    ):
        super().__init__()
        self.images, self.targets, self.weights = images, targets, weights
        self.batch_size, self.augment, self.seed = batch_size, augment, seed
        self.teacher, self.teacher_weight = teacher, teacher_weight
        self.epoch = 0
        self.order = np.arange(len(images))

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = self.images[rows]
        if self.augment.strength > 0:
            images = augment_batch(images, batch_rng(self.seed, self.epoch, index), self.augment)
        targets = self.targets[rows]
        if self.teacher is not None:
            targets = blend_targets(targets, self.teacher(images), self.teacher_weight)
        return images[..., None].astype(np.float32), targets, self.weights[rows]


#: Training faces that give an imported graph's batch norms their statistics (`onnx_import`).
IMPORT_CALIBRATION_IMAGES = 1024


def starting_classifier(config: TrainConfig, train: Dataset) -> keras.Model:
    """The network ``--init-from`` names: a run's ``best.keras``, or an exported ``model.onnx`` rebuilt in Keras.

    An exported graph (the bundled model, say) is rebuilt as it was exported (its normalisation, stored image size
    and in-graph input size, read from the card beside it) and checked against onnxruntime; its weights then start
    this run whatever this run's normalisation and sizes are (the backbones take any input size).
    """
    path = Path(config.init_from or "")
    if path.suffix != ".onnx":
        return load_classifier(path)
    from .onnx_import import card_of, import_onnx

    card = card_of(path)
    normalise = card.get("input", {}).get("normalise", "fixed")
    classes = len(card.get("labels", [])) or config.model.num_classes
    side = int(card.get("input", {}).get("height", config.model.image_size))  # the graph's input; no weights
    upsampled = int(
        card.get("backbone", {}).get("input_size", config.model.input_size)
    )  # resized to, in-graph
    start = build_classifier(
        dataclasses.replace(
            config.model,
            weights="none",
            normalise=normalise,
            num_classes=classes,
            image_size=side,
            input_size=upsampled,
        )
    )
    rng = np.random.default_rng(config.seed)
    sample = rng.choice(
        len(train.images), size=min(IMPORT_CALIBRATION_IMAGES, len(train.images)), replace=False
    )
    faces = fit_to_input(train.images[np.sort(sample)], side)  # at the graph's own input size
    try:
        diff = import_onnx(start, path, faces, flip_tta=bool(card.get("export", {}).get("flip_tta")))
    except ValueError as exc:
        raise WeightsUnavailable(f"--init-from {path}: {exc}") from None
    log.info(
        "rebuilt %s in Keras (%s normalisation, %d px in-graph; largest probability difference %.1e on %d "
        "training faces)",
        path,
        normalise,
        upsampled,
        diff,
        len(sample),
    )
    return start


def start_from(classifier: keras.Model, start: keras.Model, source: str, labels: list[str]) -> None:
    """Copy ``start``'s weights into ``classifier``; with another number of classes, all but the head's.

    A start trained on other classes (the bundled model's seven, say, for a five-class study) still gives its
    backbone; the new head starts from scratch (and trains on the frozen backbone first when the run has a
    stage 1: ``--head-epochs`` with ``--weights`` other than none).
    """
    start_classes = start.output_shape[-1]
    try:
        if start_classes == len(labels):
            classifier.set_weights(start.get_weights())
        else:
            backbone_of(classifier).set_weights(backbone_of(start).get_weights())
    except ValueError as exc:
        raise WeightsUnavailable(
            f"--init-from {source}: its architecture differs from this run's backbone and sizes ({exc})"
        ) from None
    if start_classes == len(labels):
        log.info("starting from the weights of %s", source)
    else:
        log.info(
            "starting from the backbone of %s, with a new head: it has %d classes and these data %d (%s)",
            source,
            start_classes,
            len(labels),
            ", ".join(labels),
        )


def training_targets(config: TrainConfig, run: RunDir, train: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(targets [N, C], keep mask [N]): one-hot, or vote-blended with --labels, then teacher-blended (unless
    the teacher runs online, on each batch)."""
    num_classes = config.model.num_classes
    keep = np.ones(len(train), dtype=bool)
    if config.labels:
        votes = read_votes(Path(config.labels), train.files, train.labels)
        targets = soft_targets(votes, train.targets, num_classes, config.label_weight)
        keep = votes.keep_mask()
        log.info(
            "%s: votes for %d of %d training images; %d left out (raters chose no class); "
            "targets are %.0f%% folder label",
            config.labels,
            int(votes.has_votes.sum()),
            len(train),
            int((~keep).sum()),
            100 * config.label_weight,
        )
    else:
        targets = one_hot(train.targets, num_classes)
    if config.teacher and not config.online_teacher:
        targets = distillation_targets(config, run, train, targets)
    return targets, keep


def validation_targets(config: TrainConfig, val: Dataset) -> np.ndarray:
    """The validation split's targets, built as the training targets are (so val_accuracy means the same)."""
    if config.labels:
        votes = read_votes(Path(config.labels), val.files, val.labels)
        return soft_targets(votes, val.targets, config.model.num_classes, config.label_weight)
    return one_hot(val.targets, config.model.num_classes)


def fit(config: TrainConfig, run: RunDir, train: Dataset, val: Dataset, verbose: int = 1) -> RunState:
    """Train (or continue training) until both stages are done; returns the final state.

    Each epoch is one ``model.fit`` call over batches drawn from (seed, epoch), so an epoch resumed after a
    kill sees the same images, in the same order, with the same augmentation as it would have.
    """
    keras.utils.set_random_seed(config.seed)
    state = run.load_state()
    if state.finished:
        log.info("run already finished (%d epochs); nothing to train", state.epochs_done)
        return state

    y_train, keep = training_targets(config, run, train)
    hard = y_train.argmax(axis=1)
    weights = class_weights(hard[keep], config.model.num_classes, config.class_weight)
    teacher = online_teacher(config, run, train) if config.teacher and config.online_teacher else None
    batches = AugmentedBatches(
        train.images[keep],
        y_train[keep],
        weights[hard[keep]].astype(np.float32),
        config.batch_size,
        config.augment_config(),
        config.seed,
        teacher,
        config.teacher_weight,
    )
    x_val, y_val = as_inputs(val), validation_targets(config, val)
    steps = len(batches)
    log.info(
        "class weights (%s): %s",
        config.class_weight,
        ", ".join(f"{label} {w:.2f}" for label, w in zip(train.labels, weights)),
    )

    classifier = build_classifier(config.model)
    if config.init_from and not state.checkpoint:
        start_from(classifier, starting_classifier(config, train), config.init_from, train.labels)
    model = build_training_model(classifier)
    compiled_stage = 0
    for stage, stage_end in ((1, config.stage1_epochs), (2, config.epochs)):
        if state.epochs_done >= stage_end or (stage == 2 and state.stopped_early):
            continue
        set_trainable(classifier, stage, config.fine_tune_layers)
        _compile(model, config, stage, steps)
        if state.checkpoint and compiled_stage == 0:
            # Weights always carry over; optimiser state only within the stage it belongs to.
            if state.checkpoint_stage == stage:
                log.info(
                    "resuming from %s after epoch %d (stage %d)", state.checkpoint, state.epochs_done, stage
                )
                load_checkpoint(model, run.checkpoints, state.checkpoint)
            else:
                model.load_weights(run.checkpoints / f"{state.checkpoint}.weights.h5")
        compiled_stage = stage
        log.info(
            "stage %d: epochs %d-%d, %d trainable weights",
            stage,
            state.epochs_done + 1,
            stage_end,
            len(model.trainable_weights),
        )
        checkpoint = EpochCheckpoint(run, state, stage, config.patience if stage == 2 else 0)
        while state.epochs_done < stage_end and not state.stopped_early:
            batches.start_epoch(state.epochs_done)
            model.fit(
                batches,
                epochs=state.epochs_done + 1,
                initial_epoch=state.epochs_done,
                validation_data=(x_val, y_val),
                callbacks=[checkpoint],
                verbose=verbose,
            )
    state.finished = True
    run.save_state(state)
    return state
