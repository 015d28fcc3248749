"""``emotion-train``: train, export and evaluate an emotion classifier on a folder-per-class dataset.

emotion-train DATA_DIR --out RUN_DIR [options]     train, export to ONNX, evaluate (the default step)
emotion-train export RUN_DIR                       re-export best.keras -> model.onnx with a parity check
emotion-train evaluate RUN_DIR [--test DIR]        measure model.onnx, rewrite metrics.json and the card
emotion-train ensemble RUN_DIR RUN_DIR... --out D  average exported runs inside one ONNX graph
emotion-train soup RUN_DIR RUN_DIR... --out D --val DIR   average runs' weights into one network
emotion-train quantize SRC_DIR --out D --calibration DIR   an int8 copy, checked against the float model
emotion-train smooth SRC_DIR --out D --val DIR     input smoothing in the graph, sigma chosen on --val
emotion-train half SRC_DIR --out D [--val DIR]     float16 weight storage, float32 arithmetic, checked
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from emotion_batch.cli import DefaultGroup

from .config import BACKBONES, NORMALISATIONS, SCRATCH_BACKBONES, ModelConfig
from .data import DatasetError

log = logging.getLogger("emotion_train")


class TrainGroup(DefaultGroup):
    """Routes ``emotion-train DATA_DIR ...`` to ``train``, keeping ``export`` and ``evaluate`` as named steps."""

    default_command = "train"


def _setup_logging(log_file: Path | None, verbose: bool) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        root.addHandler(handler)
    for noisy in ("tensorflow", "absl", "tf2onnx", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _fail(exc: Exception) -> None:
    log.error("%s", exc)
    raise click.ClickException(str(exc)) from exc


_FOLDER = click.Path(exists=True, file_okay=False, path_type=Path)


def _options(*options: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    """Several click decorators as one, listed in --help in the order given."""

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _combination_options(out_help: str) -> Callable[[Callable], Callable]:
    """RUN_DIR RUN_DIR [...], --out and --weight, for the commands that combine exported runs."""
    return _options(
        click.argument("run_dirs", metavar="RUN_DIR RUN_DIR [...]", nargs=-1, required=True, type=_FOLDER),
        click.option(
            "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help=out_help
        ),
        click.option(
            "--weight",
            "weights",
            multiple=True,
            type=click.FloatRange(0, min_open=True),
            help="One per RUN_DIR, in order (normalised to sum 1). Default: equal weights.",
        ),
    )


def _split_options(val_help: str, test_help: str) -> Callable[[Callable], Callable]:
    """--val, --val-pattern, --test and --test-pattern, for the commands that score an exported model."""
    return _options(
        click.option("--val", "val_dir", type=_FOLDER, help=val_help),
        click.option(
            "--val-pattern", help="Only --val files whose name matches this glob (e.g. 'PublicTest_*')."
        ),
        click.option("--test", "test_dir", type=_FOLDER, help=test_help),
        click.option(
            "--test-pattern", help="Only --test files whose name matches this glob (e.g. 'PrivateTest_*')."
        ),
    )


def _split(folder: Path | None, pattern: str | None, name: str) -> tuple[Path, str | None] | None:
    """An evaluation split as (folder, pattern), or None; a pattern without its folder is a usage error."""
    if folder is None:
        if pattern:
            raise click.BadParameter(f"a pattern needs --{name} DIR", param_hint=f"--{name}-pattern")
        return None
    return folder.resolve(), pattern


@click.group(cls=TrainGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train the emotion classifier on a folder-per-class dataset and export it to ONNX."""
    _quiet_tensorflow()


@main.command("train")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "run_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder: model.onnx, model.json, metrics.json, plots, history, checkpoints.",
)
@click.option(
    "--val",
    "val_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Validation folder (same class subfolders). Default: a stratified split of DATA_DIR.",
)
@click.option(
    "--val-split",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Fraction of DATA_DIR held out per class when --val is not given.",
)
@click.option(
    "--test",
    "test_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Test folder, used once at the end for the reported metrics.",
)
@click.option("--train-pattern", help="Only DATA_DIR files whose name matches this glob.")
@click.option("--val-pattern", help="Only --val files whose name matches this glob (e.g. 'PublicTest_*').")
@click.option("--test-pattern", help="Only --test files whose name matches this glob (e.g. 'PrivateTest_*').")
@click.option(
    "--backbone",
    type=click.Choice(BACKBONES),
    default="mobilenetv2",
    show_default=True,
    help="A Keras MobileNet, or cnn3: a small from-scratch CNN (a baseline; quick experiments).",
)
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Backbone width multiplier.")
@click.option(
    "--input-size",
    type=click.IntRange(32, 512),
    default=96,
    show_default=True,
    help="Resolution the backbone sees (upsampled inside the graph).",
)
@click.option(
    "--image-size",
    type=click.IntRange(0, 512),
    default=0,
    show_default=True,
    help="Resolution images are stored at and the ONNX input; 0 = the data's typical size, "
    "at most --input-size.",
)
@click.option(
    "--weights",
    default="none",
    show_default=True,
    help="'imagenet' (Keras download), 'none' (from scratch) or a path to a no-top .h5 file.",
)
@click.option(
    "--epochs", type=click.IntRange(1), default=30, show_default=True, help="Total epochs, both stages."
)
@click.option(
    "--head-epochs",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Stage 1 epochs training only the head on a frozen backbone (skipped with --weights none).",
)
@click.option(
    "--fine-tune-layers",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Stage 2 trains the top N backbone layers; 0 = all of them.",
)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option(
    "--lr", type=float, default=5e-4, show_default=True, help="Stage 2 peak learning rate (cosine decay)."
)
@click.option("--head-lr", type=float, default=1e-3, show_default=True, help="Stage 1 learning rate.")
@click.option("--warmup-epochs", type=click.IntRange(0), default=1, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(0, 0.5), default=0.1, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 0.9), default=0.3, show_default=True)
@click.option(
    "--l2", type=click.FloatRange(0), default=0.0, show_default=True, help="L2 penalty on the head."
)
@click.option(
    "--class-weight",
    type=click.Choice(["none", "sqrt", "balanced"]),
    default="sqrt",
    show_default=True,
    help="Loss weights against class imbalance.",
)
@click.option(
    "--augment",
    type=click.FloatRange(0, 3),
    default=1.0,
    show_default=True,
    help="Augmentation strength (0 = none).",
)
@click.option(
    "--erasing",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Probability of random erasing: a noise patch over 2-25% of the image.",
)
@click.option("--bn-momentum", type=click.FloatRange(0, 1), default=0.99, show_default=True)
@click.option(
    "--normalise",
    type=click.Choice(NORMALISATIONS),
    default="fixed",
    show_default=True,
    help="How the graph scales a face for the backbone: 'fixed' maps 0-255 to [-1, 1]; 'per-image' "
    "takes each face's own mean and contrast, so dark or washed-out faces read like well-lit "
    "ones.",
)
@click.option(
    "--patience",
    type=click.IntRange(0),
    default=8,
    show_default=True,
    help="Stop fine-tuning after N epochs without a better val accuracy (0 = never).",
)
@click.option(
    "--teacher",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Distil from this exported model (e.g. an ensemble's model.onnx): its probabilities on the "
    "training images, averaged with their mirror images, join the one-hot labels as targets.",
)
@click.option(
    "--teacher-weight",
    type=click.FloatRange(0, 1, min_open=True),
    help="Share of each target taken from --teacher.  [default: 0.5]",
)
@click.option(
    "--online-teacher",
    is_flag=True,
    help="Run --teacher on every augmented training batch (the student learns the teacher's answer "
    "on the image it sees) instead of once on the clean images; each epoch takes longer.",
)
@click.option(
    "--labels",
    "labels_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Multi-rater votes: a CSV with a 'path' column and one vote-count column per class (e.g. "
    "FER+'s ferplus.csv). Voted files train on their vote distribution; others on their folder.",
)
@click.option(
    "--label-weight",
    type=click.FloatRange(0, 1),
    default=None,
    help="With --labels: share of each voted target kept from the folder label.  [default: 0]",
)
@click.option(
    "--init-from",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Start from a trained run's checkpoints/best.keras, or an exported model.onnx such as the "
    "bundled models/model.onnx (same backbone and sizes), instead of --weights: e.g. to fine-tune "
    "on your own faces or on other labels.",
)
@click.option(
    "--tta/--no-tta",
    default=True,
    show_default=True,
    help="Average the horizontally flipped image's prediction inside the exported graph.",
)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last checkpoint.")
@click.option("-v", "--verbose", is_flag=True)
def train_command(
    data_dir: Path,
    run_dir: Path,
    val_dir,
    val_split,
    test_dir,
    train_pattern,
    val_pattern,
    test_pattern,
    backbone,
    alpha,
    input_size,
    image_size,
    weights,
    epochs,
    head_epochs,
    fine_tune_layers,
    batch_size,
    lr,
    head_lr,
    warmup_epochs,
    weight_decay,
    label_smoothing,
    dropout,
    l2,
    class_weight,
    augment,
    erasing,
    bn_momentum,
    normalise,
    patience,
    teacher,
    teacher_weight,
    online_teacher,
    labels_csv,
    label_weight,
    init_from,
    tta,
    seed,
    resume,
    verbose,
) -> None:
    """Train on DATA_DIR (one subfolder per class), then export and evaluate into RUN_DIR."""
    from .train import TrainConfig
    from .workflow import DataSpec, RunConfig, train_run

    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise click.BadParameter(f"{weights}: no such weights file", param_hint="--weights")
    weights = weights if weights in ("imagenet", "none") else str(Path(weights).resolve())
    if backbone in SCRATCH_BACKBONES and weights != "none":
        raise click.BadParameter(
            f"--backbone {backbone} has no pretrained weights; it trains from scratch (--weights none)",
            param_hint="--weights",
        )
    for given, hint in (
        (teacher_weight is not None, "--teacher-weight"),
        (online_teacher, "--online-teacher"),
    ):
        if given and teacher is None:
            raise click.BadParameter("only applies with --teacher", param_hint=hint)
    fine_tune_epochs = epochs - (0 if weights == "none" else min(head_epochs, epochs))
    if warmup_epochs and fine_tune_epochs <= warmup_epochs:
        raise click.BadParameter(
            f"{epochs} epochs leave {fine_tune_epochs} fine-tuning epoch(s), not more than --warmup-epochs "
            f"{warmup_epochs}: the learning rate would never leave its warm-up; raise --epochs or lower "
            "--warmup-epochs",
            param_hint="--epochs",
        )
    if label_weight is not None and labels_csv is None:
        raise click.BadParameter("only applies with --labels", param_hint="--label-weight")
    _setup_logging(
        run_dir / "train.log", verbose
    )  # after the usage checks: a refused command leaves no folder
    model = ModelConfig(
        backbone=backbone,
        alpha=alpha,
        image_size=image_size,
        input_size=input_size,
        weights=weights,
        dropout=dropout,
        l2=l2,
        bn_momentum=bn_momentum,
        normalise=normalise,
    )
    train = TrainConfig(
        model=model,
        epochs=epochs,
        head_epochs=head_epochs,
        batch_size=batch_size,
        head_lr=head_lr,
        lr=lr,
        warmup_epochs=warmup_epochs,
        weight_decay=weight_decay,
        fine_tune_layers=fine_tune_layers,
        label_smoothing=label_smoothing,
        class_weight=class_weight,
        augment=augment,
        erasing=erasing,
        patience=patience,
        seed=seed,
        teacher=str(teacher.resolve()) if teacher else None,
        teacher_weight=0.5 if teacher_weight is None else teacher_weight,
        online_teacher=online_teacher,
        labels=str(labels_csv.resolve()) if labels_csv else None,
        label_weight=label_weight or 0.0,
        init_from=str(init_from.resolve()) if init_from else None,
    )

    def spec(folder: Path | None, pattern: str | None) -> DataSpec | None:
        return DataSpec(str(Path(folder).resolve()), pattern) if folder else None

    config = RunConfig(
        train=train,
        data=DataSpec(str(data_dir.resolve()), train_pattern),
        val=spec(val_dir, val_pattern),
        val_split=val_split,
        test=spec(test_dir, test_pattern),
        flip_tta=tta,
        command=["emotion-train", *sys.argv[1:]],
    )
    from .model import WeightsUnavailable

    try:
        results = train_run(config, run_dir, resume, verbose=1 if sys.stdout.isatty() else 2)
    except (DatasetError, WeightsUnavailable) as exc:
        _fail(exc)
    _print_result(run_dir, results)


@main.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tta/--no-tta", default=None, help="Override the run's flip-TTA setting.")
@click.option("-v", "--verbose", is_flag=True)
def export_command(run_dir: Path, tta: bool | None, verbose: bool) -> None:
    """Export RUN_DIR's best checkpoint to model.onnx (fails above 1e-4 max abs difference), then evaluate."""
    from .export import ExportError
    from .workflow import evaluate_run, export_run

    _setup_logging(run_dir / "train.log", verbose)
    try:
        parity = export_run(run_dir, flip_tta=tta)
        results = evaluate_run(run_dir)
    except (DatasetError, ExportError) as exc:
        _fail(exc)
    click.echo(f"parity: max |onnx - keras| = {parity['max_abs_diff']:.2e} on {parity['images']} images")
    _print_result(run_dir, results)


@main.command("evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--test",
    "test_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Test folder to report on (default: the run's own --test, else validation).",
)
@click.option("--test-pattern", help="Only files whose name matches this glob.")
@click.option("-v", "--verbose", is_flag=True)
def evaluate_command(run_dir: Path, test_dir: Path | None, test_pattern: str | None, verbose: bool) -> None:
    """Measure RUN_DIR/model.onnx as the runtime runs it; rewrite metrics.json, plots and model.json."""
    from .workflow import DataSpec, evaluate_run

    _setup_logging(run_dir / "train.log", verbose)
    test = DataSpec(str(test_dir.resolve()), test_pattern) if test_dir else None
    try:
        results = evaluate_run(run_dir, test=test)
    except DatasetError as exc:
        _fail(exc)
    _print_result(run_dir, results)


def _check_combination(
    kind: str, run_dirs: tuple[Path, ...], weights: tuple[float, ...], out_dir: Path
) -> None:
    """Usage checks shared by the commands that combine runs (ensemble, soup)."""
    if len(run_dirs) < 2:
        raise click.BadParameter(f"{kind} needs at least two runs", param_hint="RUN_DIR")
    if weights and len(weights) != len(run_dirs):
        raise click.BadParameter(
            f"{len(weights)} values for {len(run_dirs)} runs; give one per RUN_DIR or none",
            param_hint="--weight",
        )
    if (out_dir / "config.json").exists():
        raise click.BadParameter(f"{out_dir} holds a training run; choose a new folder", param_hint="--out")


@main.command("ensemble")
@_combination_options("Folder for the ensemble's model.onnx, model.json, metrics.json and plots.")
@_split_options(
    "Validation folder to evaluate the ensemble on (its images also serve the parity check).",
    "Test folder to evaluate the ensemble on.",
)
@click.option("-v", "--verbose", is_flag=True)
def ensemble_command(
    run_dirs: tuple[Path, ...],
    out_dir: Path,
    weights: tuple[float, ...],
    val_dir: Path | None,
    val_pattern: str | None,
    test_dir: Path | None,
    test_pattern: str | None,
    verbose: bool,
) -> None:
    """Average the exported models of RUN_DIRs inside one ONNX graph (checked within 1e-5), then evaluate."""
    from .ensemble import EnsembleError, ensemble_run

    _check_combination("an ensemble", run_dirs, weights, out_dir)
    _setup_logging(out_dir / "ensemble.log", verbose)
    val, test = _split(val_dir, val_pattern, "val"), _split(test_dir, test_pattern, "test")
    try:
        results, parity = ensemble_run(
            run_dirs, out_dir, weights or None, val, test, command=["emotion-train", *sys.argv[1:]]
        )
    except (DatasetError, EnsembleError) as exc:
        _fail(exc)
    click.echo(
        f"parity: max |ensemble - weighted mean| = {parity['max_abs_diff']:.2e} on {parity['images']} images"
    )
    _print_result(out_dir, results)


@main.command("soup")
@_combination_options(
    "Folder for the soup's checkpoints/best.keras, model.onnx, model.json, metrics.json, plots."
)
@_split_options(
    "Validation folder to judge the soup on (its first images also serve the parity check).",
    "Test folder to evaluate the soup on.",
)
@click.option("-v", "--verbose", is_flag=True)
def soup_command(
    run_dirs: tuple[Path, ...],
    out_dir: Path,
    weights: tuple[float, ...],
    val_dir: Path | None,
    val_pattern: str | None,
    test_dir: Path | None,
    test_pattern: str | None,
    verbose: bool,
) -> None:
    """Average the weights of RUN_DIRs' best checkpoints into one network (one network's cost per face).

    Meant for runs fine-tuned from the same weights; compare the soup's val figures with the runs' own.
    """
    from .soup import SoupError, soup_run

    _check_combination("a soup", run_dirs, weights, out_dir)
    if val_dir is None:
        raise click.BadParameter("a soup is judged on validation images; give --val DIR", param_hint="--val")
    _setup_logging(out_dir / "soup.log", verbose)
    val, test = _split(val_dir, val_pattern, "val"), _split(test_dir, test_pattern, "test")
    try:
        results, parity = soup_run(
            run_dirs, out_dir, weights or None, val, test, command=["emotion-train", *sys.argv[1:]]
        )
    except (DatasetError, SoupError) as exc:
        _fail(exc)
    click.echo(f"parity: max |onnx - keras| = {parity['max_abs_diff']:.2e} on {parity['images']} images")
    for ingredient in json.loads((out_dir / "model.json").read_text())[
        "ingredients"
    ]:  # read once, by soup_run
        if val := ingredient["metrics"].get("val"):
            click.echo(f"ingredient {ingredient['run_dir']}: val accuracy {val['accuracy']:.4f}")
    _print_result(out_dir, results)


@main.command("smooth")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the smoothed model.onnx, model.json, metrics.json and plots.",
)
@click.option(
    "--sigma",
    "sigmas",
    multiple=True,
    type=click.FloatRange(0, 3, min_open=True),
    help="Gaussian sigma in input pixels; repeat to try several, the best on --val is kept "
    "[default: 0.5 0.6 ... 1.0; one value needs no --val].",
)
@_split_options(
    "Validation folder: chooses sigma (also the parity check).",
    "Test folder to evaluate the smoothed model on.",
)
@click.option("-v", "--verbose", is_flag=True)
def smooth_command(
    src_dir: Path,
    out_dir: Path,
    sigmas: tuple[float, ...],
    val_dir: Path | None,
    val_pattern: str | None,
    test_dir: Path | None,
    test_pattern: str | None,
    verbose: bool,
) -> None:
    """Smooth SRC_DIR's input inside its graph, as training augmentation smooths every training image."""
    from .smoothing import DEFAULT_SIGMAS, SmoothingError, smooth_model

    val, test = _split(val_dir, val_pattern, "val"), _split(test_dir, test_pattern, "test")
    sigmas = sigmas or DEFAULT_SIGMAS
    if len(sigmas) > 1 and val is None:
        raise click.BadParameter(
            "choosing among several sigmas needs --val DIR; or give one --sigma", param_hint="--sigma"
        )
    if out_dir.resolve() == src_dir.resolve():
        raise click.BadParameter("writing over the source; choose a new folder", param_hint="--out")
    if (out_dir / "config.json").exists():
        raise click.BadParameter(f"{out_dir} holds a training run; choose a new folder", param_hint="--out")
    _setup_logging(None, verbose)
    try:
        results, section = smooth_model(
            src_dir, out_dir, sigmas, val, test, command=["emotion-train", *sys.argv[1:]]
        )
    except (DatasetError, SmoothingError) as exc:
        _fail(exc)
    for candidate in section["candidates"]:
        click.echo(f"sigma {candidate['sigma']:.2f}: val accuracy {candidate['val_accuracy']:.4f}")
    click.echo(
        f"kept sigma {section['sigma']:.2f}; parity: max |graph - reference| = "
        f"{section['parity']['max_abs_diff']:.2e} on {section['parity']['images']} images"
    )
    _print_result(out_dir, results)


@main.command("half")
@click.argument("src_dir", type=_FOLDER)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the model.onnx with float16 weights and its model.json.",
)
@click.option(
    "--val", "val_dir", type=_FOLDER, help="Images to compare the two models on (else random ones)."
)
@click.option("--val-pattern", help="Only --val files whose name matches this glob (e.g. 'PublicTest_*').")
@click.option("-v", "--verbose", is_flag=True)
def half_command(
    src_dir: Path, out_dir: Path, val_dir: Path | None, val_pattern: str | None, verbose: bool
) -> None:
    """Store SRC_DIR's float32 weights as float16 (half the file; the arithmetic stays float32)."""
    from .half import HalfError, halve_model

    if out_dir.resolve() == src_dir.resolve():
        raise click.BadParameter("writing over the source; choose a new folder", param_hint="--out")
    _setup_logging(None, verbose)
    try:
        section = halve_model(
            src_dir, out_dir, _split(val_dir, val_pattern, "val"), command=["emotion-train", *sys.argv[1:]]
        )
    except HalfError as exc:
        _fail(exc)
    check, speed = section["agreement"], section["ms_per_face"]
    click.echo(
        f"{section['weights_converted']} weights as float16: {section['source']['size_bytes']} -> "
        f"{section['size_bytes']} bytes; max |diff| {check['max_abs_diff']:.2e}, argmax agreement "
        f"{check['argmax_agreement']:.4f} on {check['images']} images"
    )
    click.echo(
        f"ms per face (batch 1, one thread): float32 weights {speed['float32']:.2f}, "
        f"float16 weights {speed['float16']:.2f}"
    )
    for kind, acc in section.get("val_accuracy", {}).items():
        click.echo(f"val accuracy with {kind} weights: {acc:.4f}")


@main.command("quantize")
@click.argument("src_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the int8 model.onnx, model.json, metrics.json and plots.",
)
@click.option(
    "--calibration",
    "calibration_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder-per-class images to calibrate on (the training data).",
)
@click.option("--calibration-pattern", help="Only --calibration files whose name matches this glob.")
@click.option(
    "--images",
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="Random calibration images drawn from --calibration.",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the calibration draw.")
@_split_options(
    "Validation folder: float and int8 accuracy compared here (also the agreement check).",
    "Test folder to evaluate the int8 model on.",
)
@click.option(
    "--max-drop",
    type=float,
    default=None,
    help="Refuse when int8 val accuracy is more than this many points below float [default: 1.0; "
    "needs --val].",
)
@click.option("-v", "--verbose", is_flag=True)
def quantize_command(
    src_dir: Path,
    out_dir: Path,
    calibration_dir: Path,
    calibration_pattern: str | None,
    images: int,
    seed: int,
    val_dir: Path | None,
    val_pattern: str | None,
    test_dir: Path | None,
    test_pattern: str | None,
    max_drop: float | None,
    verbose: bool,
) -> None:
    """Quantise SRC_DIR's model.onnx to int8 (static, QDQ); written only if it keeps val accuracy."""
    from .quantize import DEFAULT_MAX_DROP, QuantizeError, quantize_model

    val, test = _split(val_dir, val_pattern, "val"), _split(test_dir, test_pattern, "test")
    if max_drop is not None and val_dir is None:
        raise click.BadParameter("the accuracy check needs --val DIR", param_hint="--max-drop")
    if out_dir.resolve() == src_dir.resolve():
        raise click.BadParameter("writing over the float source; choose a new folder", param_hint="--out")
    if (out_dir / "config.json").exists():
        raise click.BadParameter(f"{out_dir} holds a training run; choose a new folder", param_hint="--out")
    _setup_logging(None, verbose)  # no log file: a refused model leaves OUT_DIR untouched
    try:
        results, section = quantize_model(
            src_dir,
            out_dir,
            (calibration_dir.resolve(), calibration_pattern),
            images,
            seed,
            val,
            test,
            DEFAULT_MAX_DROP if max_drop is None else max_drop,
            command=["emotion-train", *sys.argv[1:]],
        )
    except (DatasetError, QuantizeError) as exc:
        _fail(exc)
    check, speed = section["agreement"], section["ms_per_face"]
    click.echo(
        f"int8 vs float on {check['images']} images: argmax agreement {check['argmax_agreement']:.4f}, "
        f"max |diff| {check['max_abs_diff']:.3e}, mean |diff| {check['mean_abs_diff']:.3e}"
    )
    for name, acc in section["accuracy"].items():
        click.echo(
            f"{name} accuracy: float {acc['float']:.4f}, int8 {acc['int8']:.4f} "
            f"(drop {acc['drop_points']:.2f} points)"
        )
    click.echo(
        f"ms per face (batch 1, one thread): float {speed['float']:.2f}, int8 {speed['int8']:.2f} "
        f"({speed['speedup']:.2f}x); size {section['source']['size_bytes']} -> {section['size_bytes']} bytes"
    )
    _print_result(out_dir, results)


def _print_result(run_dir: Path, results: dict) -> None:
    for name in ("val", "test"):
        if name in results:
            m = results[name]
            click.echo(
                f"{name}: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
                f"(n={m['n']}, {m['split']})"
            )
    click.echo(f"wrote {run_dir / 'model.onnx'} and {run_dir / 'model.json'}")


if __name__ == "__main__":
    main()
