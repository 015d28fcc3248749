"""Multi-rater labels: per-class vote counts for some of a dataset's files, from a CSV.

The CSV has a ``path`` column and one column of vote counts per class, named by class (``angry`` ...) or by
a common synonym (FER+'s ``anger``, ``happiness``, ``sadness``). Columns that name no training class
(FER+'s ``contempt``, ``unknown``, ``NF``) are read as votes *against* every class. A path matches a
dataset file when it equals the file's path relative to the dataset folder, or ends with ``/`` and that
path (FER+'s paths are relative to the folder above ``train/`` and ``test/``).

A file's target is its vote distribution over the classes, blended with its folder label by
``label_weight``; files without votes keep their folder label. Files whose raters mostly said "none of
these" are left out of training (``keep_mask``) and out of majority-vote scoring.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DatasetError

SYNONYMS = {
    "anger": "angry",
    "happiness": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "fearful": "fear",
    "disgusted": "disgust",
    "happy": "happy",
    "neutral": "neutral",
}


@dataclass(frozen=True)
class Votes:
    """Vote counts aligned with a dataset's files: ``counts[i]`` is all zeros where file i has no votes."""

    counts: np.ndarray  # float64 [N, C] votes per class
    other: np.ndarray  # float64 [N] votes for no class (contempt, unknown, not a face, ...)
    matched: int
    source: str

    @property
    def has_votes(self) -> np.ndarray:
        return (self.counts.sum(axis=1) + self.other) > 0

    def keep_mask(self) -> np.ndarray:
        """False where most raters chose no class: such a face says nothing about the seven emotions."""
        return ~(self.has_votes & (self.other >= self.counts.max(axis=1)) & (self.other > 0))

    def majority(self) -> np.ndarray:
        """Index of the single most-voted class, or -1 (no votes, a tie, or a 'no class' majority)."""
        top = self.counts.max(axis=1)
        unique = (self.counts == top[:, None]).sum(axis=1) == 1
        ok = self.has_votes & unique & (top > self.other) & (top > 0)
        return np.where(ok, self.counts.argmax(axis=1), -1)

    def distribution(self) -> np.ndarray:
        total = self.counts.sum(axis=1, keepdims=True)
        return np.divide(self.counts, total, out=np.zeros_like(self.counts), where=total > 0)


def _column_classes(header: list[str], labels: list[str]) -> tuple[dict[int, int], list[int]]:
    by_name = {label.lower(): i for i, label in enumerate(labels)}
    class_columns: dict[int, int] = {}
    other_columns = []
    meta = {"path", "usage", "fer2013_label", "ferplus_images", "file", "label"}
    for col, name in enumerate(header):
        key = name.strip().lower()
        if key in meta:
            continue
        key = SYNONYMS.get(key, key)
        if key in by_name:
            class_columns[col] = by_name[key]
        else:
            other_columns.append(col)
    missing = set(range(len(labels))) - set(class_columns.values())
    if missing:
        names = ", ".join(labels[i] for i in sorted(missing))
        raise DatasetError(f"no vote column for class(es) {names}; columns are {', '.join(header)}")
    return class_columns, other_columns


def read_votes(csv_path: Path, files: list[str], labels: list[str]) -> Votes:
    """Votes for ``files`` (paths relative to the dataset folder) from ``csv_path``."""
    csv_path = Path(csv_path)
    try:
        handle = csv_path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{csv_path}: cannot read the votes file: {exc.strerror or exc}") from exc
    index = {rel.replace("\\", "/"): i for i, rel in enumerate(files)}
    counts = np.zeros((len(files), len(labels)))
    other = np.zeros(len(files))
    matched = 0
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or "path" not in [h.strip().lower() for h in header]:
            raise DatasetError(f"{csv_path}: a votes file needs a header with a 'path' column")
        path_col = [h.strip().lower() for h in header].index("path")
        class_columns, other_columns = _column_classes(header, labels)
        for line, row in enumerate(reader, start=2):
            path = row[path_col].replace("\\", "/")
            i = index.get(path)
            if i is None:
                parts = path.split("/")
                i = next(
                    (index[tail] for k in range(1, len(parts)) if (tail := "/".join(parts[k:])) in index),
                    None,
                )
            if i is None:
                continue
            try:
                for col, cls in class_columns.items():
                    counts[i, cls] += float(row[col] or 0)
                other[i] += sum(float(row[col] or 0) for col in other_columns)
            except (ValueError, IndexError) as exc:
                raise DatasetError(f"{csv_path}:{line}: vote counts must be numbers ({exc})") from exc
            matched += 1
    if matched == 0:
        raise DatasetError(f"{csv_path}: no row's path matches a file of the dataset (e.g. {files[0]!r})")
    return Votes(counts, other, matched, str(csv_path))


def soft_targets(votes: Votes, targets: np.ndarray, num_classes: int, label_weight: float) -> np.ndarray:
    """Per file: ``label_weight`` x folder one-hot + the rest x vote distribution; one-hot without votes."""
    one_hot = np.eye(num_classes)[targets]
    dist = votes.distribution()
    voted = dist.sum(axis=1) > 0
    blended = np.where(voted[:, None], label_weight * one_hot + (1.0 - label_weight) * dist, one_hot)
    return blended.astype(np.float32)
