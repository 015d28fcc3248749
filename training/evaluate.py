"""Metrics and plots for a trained classifier; every number says which split it was measured on."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window: training runs headless and in cron
import matplotlib.pyplot as plt
import numpy as np
from sklearn import metrics as skm

from .data import Dataset

log = logging.getLogger(__name__)


def classification_metrics(probs: np.ndarray, targets: np.ndarray, labels: list[str], split: str) -> dict:
    """Accuracy, macro-F1, per-class P/R/F1, confusion matrix and one-vs-rest ROC AUC."""
    predicted = probs.argmax(axis=1)
    classes = list(range(len(labels)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        targets, predicted, labels=classes, zero_division=0
    )
    auc = {}
    for i, label in enumerate(labels):
        positives = targets == i
        auc[label] = (
            float(skm.roc_auc_score(positives, probs[:, i])) if 0 < positives.sum() < len(targets) else None
        )
    valid_auc = [v for v in auc.values() if v is not None]
    return {
        "split": split,
        "n": len(targets),
        "accuracy": float(skm.accuracy_score(targets, predicted)),
        "macro_f1": float(skm.f1_score(targets, predicted, labels=classes, average="macro", zero_division=0)),
        "macro_roc_auc": float(np.mean(valid_auc)) if valid_auc else None,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "roc_auc": auc[label],
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": skm.confusion_matrix(targets, predicted, labels=classes).tolist(),
        "confusion_matrix_axes": "rows = true label, columns = predicted label, in label order",
    }


def evaluate_splits(
    model: Path, splits: dict[str, Dataset], labels: list[str], plots: Path, title: str, roc: bool = False
) -> dict:
    """An exported model's metrics on each split, with a confusion (and optionally ROC) plot per split."""
    from .export import onnx_probabilities

    plots.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name, ds in splits.items():
        probs = onnx_probabilities(model, ds.images[..., None].astype(np.float32))
        results[name] = classification_metrics(probs, ds.targets, labels, f"{name}: {ds.describe()}")
        plot_confusion(
            results[name]["confusion_matrix"],
            labels,
            f"{title}, {name} (acc {results[name]['accuracy']:.3f})",
            plots / f"confusion_{name}.png",
        )
        if roc:
            plot_roc(probs, ds.targets, labels, f"ROC one-vs-rest, {name}", plots / f"roc_{name}.png")
        log.info(
            "%s accuracy %.4f, macro-F1 %.4f (n=%d)",
            name,
            results[name]["accuracy"],
            results[name]["macro_f1"],
            ds.targets.size,
        )
    results["reported_on"] = "test" if "test" in results else "val" if "val" in results else None
    results["skipped_images"] = {n: [list(s) for s in ds.skipped] for n, ds in splits.items() if ds.skipped}
    return results


def card_metrics(m: dict) -> dict:
    """The part of `classification_metrics` a model card keeps: headline figures and per-class recall."""
    return {
        "split": m["split"],
        "n": m["n"],
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "macro_roc_auc": m["macro_roc_auc"],
        "per_class_recall": {k: v["recall"] for k, v in m["per_class"].items()},
    }


def plot_history(history: list[dict], path: Path) -> None:
    """Accuracy and loss per epoch for both stages, with the stage boundary marked."""
    if not history:
        return
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(epochs, [row.get(metric) for row in history], "o-", label=f"train {metric}")
        ax.plot(epochs, [row.get(f"val_{metric}") for row in history], "o-", label=f"val {metric}")
        boundary = [row["epoch"] for row in history if row["stage"] == 2]
        if boundary and boundary[0] > epochs[0]:
            ax.axvline(boundary[0] - 0.5, color="grey", linestyle="--", label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: list[list[int]], labels: list[str], title: str, path: Path) -> None:
    """Row-normalised so the diagonal reads as per-class recall; counts are printed in each cell."""
    counts = np.asarray(matrix, dtype=float)
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{normalised[i, j]:.2f}\n({int(counts[i, j])})",
                ha="center",
                va="center",
                fontsize=7,
                color=colour,
            )
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(probs: np.ndarray, targets: np.ndarray, labels: list[str], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for i, label in enumerate(labels):
        positives = targets == i
        if not 0 < positives.sum() < len(targets):
            continue
        fpr, tpr, _ = skm.roc_curve(positives, probs[:, i])
        ax.plot(fpr, tpr, label=f"{label} (AUC {skm.auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_class_distribution(splits: dict[str, Dataset], path: Path) -> None:
    names = list(splits)
    labels = next(iter(splits.values())).labels
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(9, 4))
    for k, name in enumerate(names):
        counts = splits[name].class_counts()
        positions = np.arange(len(labels)) + k * width
        bars = ax.bar(
            positions, [counts[label] for label in labels], width, label=f"{name} (n={len(splits[name])})"
        )
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(np.arange(len(labels)) + width * (len(names) - 1) / 2, labels)
    ax.set_ylabel("images")
    ax.set_title("Class distribution per split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_samples(dataset: Dataset, path: Path, per_class: int = 8, seed: int = 0) -> None:
    """A grid of random images per class: the quickest check that labels and decoding are right."""
    rng = np.random.default_rng(seed)
    rows = len(dataset.labels)
    fig, axes = plt.subplots(rows, per_class, figsize=(per_class * 1.1, rows * 1.2), squeeze=False)
    for r, label in enumerate(dataset.labels):
        members = np.flatnonzero(dataset.targets == r)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
        for c in range(per_class):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(chosen):
                ax.imshow(dataset.images[chosen[c]], cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(label, loc="left", fontsize=9)
    fig.suptitle("Sample training images per class")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
