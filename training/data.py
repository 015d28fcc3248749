"""Folder-per-class image datasets, decoded once into memory and cached on disk.

A dataset folder holds one subfolder per class; labels are the subfolder names in sorted order (the
``flow_from_directory`` layout). Every image is decoded as 8-bit greyscale, centre-cropped to a square and
resized to one side length, so a whole dataset such as FER-2013 fits in a few hundred MB.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from emotion_batch.files import atomic_file

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
CACHE_FORMAT = 1  # bump when the decoded layout changes, so old caches are not reused


class DatasetError(ValueError):
    """A dataset folder that cannot be trained on; the message names the path and the cause."""


@dataclass
class Dataset:
    """Decoded images of one split, with enough provenance to describe it in the model card."""

    root: Path
    labels: list[str]
    images: np.ndarray  # uint8 [N, S, S]
    targets: np.ndarray  # int64 [N], indices into labels
    files: list[str]  # paths relative to root, aligned with images
    content_hash: str
    pattern: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def __len__(self) -> int:
        return len(self.targets)

    def describe(self) -> str:
        """The folder and, when the split was narrowed by a glob, the glob: how cards and logs name a split."""
        return f"{self.root}" + (f" [{self.pattern}]" if self.pattern else "")

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.targets, minlength=len(self.labels))
        return {label: int(n) for label, n in zip(self.labels, counts)}

    def subset(self, index: np.ndarray, name_suffix: str, keep_skipped: bool = False) -> Dataset:
        """A view of some rows, e.g. the validation part of a split; provenance says which part."""
        return Dataset(
            root=self.root,
            labels=self.labels,
            images=self.images[index],
            targets=self.targets[index],
            files=[self.files[i] for i in index],
            content_hash=self.content_hash,
            pattern=f"{self.pattern or '*'}{name_suffix}",
            skipped=list(self.skipped) if keep_skipped else [],
        )


def class_folders(root: Path) -> list[str]:
    """The sorted class names under ``root``, or a DatasetError saying what is wrong with it."""
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: is not a folder (expected one subfolder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        found = ", ".join(classes) if classes else "none"
        raise DatasetError(
            f"{root}: found {len(classes)} class folder(s) ({found}); need at least 2, one subfolder per class"
        )
    return classes


def list_images(root: Path, classes: list[str], pattern: str | None = None) -> list[tuple[str, int]]:
    """(relative path, class index) of every image file, in a deterministic order."""
    entries: list[tuple[str, int]] = []
    for index, name in enumerate(classes):
        folder = root / name
        files = sorted(
            p.name
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and not p.name.startswith(".")
            and (pattern is None or fnmatch.fnmatch(p.name, pattern))
        )
        if not files:
            which = f" matching {pattern!r}" if pattern else ""
            raise DatasetError(f"{folder}: class folder has no images{which}")
        entries.extend((f"{name}/{f}", index) for f in files)
    return entries


def hash_files(root: Path, relpaths: list[str]) -> str:
    """sha256 over names and bytes, so the card pins exactly which data trained the model."""
    digest = hashlib.sha256()
    for rel in relpaths:
        digest.update(rel.encode("utf-8") + b"\0")
        try:
            digest.update((root / rel).read_bytes())
        except OSError as exc:  # unreadable files are reported by the decoder; keep the hash stable
            digest.update(f"<unreadable {exc.errno}>".encode())
    return digest.hexdigest()


def decode_face(path: Path, size: int) -> np.ndarray | None:
    """Greyscale uint8, centre-cropped to a square, resized to ``size``; None when OpenCV cannot read it."""
    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile copes with non-ASCII names where imread may not
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    if image is None or image.size == 0:
        return None
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[top : top + side, left : left + side]
    if side != size:
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interpolation)
    return image


def typical_side(root: Path, relpaths: list[str], sample: int = 200) -> int:
    """Median shorter side of a sample of images: the resolution the data really has."""
    step = max(1, len(relpaths) // sample)
    sides = []
    for rel in relpaths[::step][:sample]:
        data = np.fromfile(root / rel, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
        if image is not None:
            sides.append(min(image.shape[:2]))
    if not sides:
        raise DatasetError(f"{root}: none of the sampled images could be decoded")
    return int(np.median(sides))


def default_cache_dir() -> Path:
    env = os.environ.get("EMOTION_TRAIN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emotion-batch" / "datasets"


def load_folder(
    root: Path,
    image_size: int,
    pattern: str | None = None,
    labels: list[str] | None = None,
    cache_dir: Path | None = None,
) -> Dataset:
    """Decode a class-folder dataset, reusing a cached decode of identical content.

    ``labels`` is the training label set; a split whose class folders differ is an error, because
    silently re-indexing classes would corrupt every metric.
    """
    root = Path(root)
    classes = class_folders(root)
    if labels is not None and classes != labels:
        raise DatasetError(
            f"{root}: class folders {classes} differ from the training classes {labels}; "
            "every split needs the same class subfolders"
        )
    entries = list_images(root, classes, pattern)
    relpaths = [rel for rel, _ in entries]
    content_hash = hash_files(root, relpaths)

    cache_dir = cache_dir or default_cache_dir()
    cache_file = cache_dir / f"v{CACHE_FORMAT}-{content_hash[:24]}-{image_size}px.npz"
    if cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as cached:
                images, targets, kept = cached["images"], cached["targets"], list(cached["files"])
                skipped = [tuple(s) for s in cached["skipped"].reshape(-1, 2).tolist()]
            log.info("%s: %d images from cache %s", root, len(targets), cache_file)
            _log_skipped(root, skipped)  # every run's log names the files it left out, cached or not
            return Dataset(root, classes, images, targets, kept, content_hash, pattern, skipped)
        except (OSError, KeyError, ValueError) as exc:
            log.warning("%s: ignoring unreadable cache (%s), decoding again", cache_file, exc)

    images_list, targets_list, kept, skipped = [], [], [], []
    for rel, target in entries:
        try:
            image = decode_face(root / rel, image_size)
        except OSError as exc:
            image, reason = None, f"cannot read: {exc.strerror or exc}"
        else:
            reason = "not a readable image"
        if image is None:
            skipped.append((rel, reason))
            continue
        images_list.append(image)
        targets_list.append(target)
        kept.append(rel)
    _log_skipped(root, skipped)
    if not kept:
        raise DatasetError(f"{root}: none of the {len(entries)} image files could be decoded")
    images = np.stack(images_list).astype(np.uint8)
    targets = np.asarray(targets_list, dtype=np.int64)
    missing = [c for i, c in enumerate(classes) if not np.any(targets == i)]
    if missing:
        raise DatasetError(f"{root}: no decodable images left in class folder(s) {missing}")

    _write_cache(cache_file, images, targets, kept, skipped)
    log.info("%s: decoded %d images (%d skipped)", root, len(kept), len(skipped))
    return Dataset(root, classes, images, targets, kept, content_hash, pattern, skipped)


def _log_skipped(root: Path, skipped: list[tuple[str, str]]) -> None:
    for rel, reason in skipped:
        log.warning("skipped %s: %s", root / rel, reason)


def _write_cache(path: Path, images, targets, files, skipped) -> None:
    """Write atomically, so an interrupted run never leaves a half-written cache behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, suffix=".tmp.npz") as handle:
            np.savez(
                handle,
                images=images,
                targets=targets,
                files=np.asarray(files, dtype=str),
                skipped=np.asarray(skipped, dtype=str).reshape(-1, 2),
            )
    except OSError as exc:  # a cache is an optimisation; never fail training over it
        log.warning("could not write dataset cache %s: %s", path, exc)


def stratified_split(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded per-class split, so a rerun with the same seed gets the same validation images."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"--val-split must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    val_index = []
    for label in range(len(dataset.labels)):
        members = np.flatnonzero(dataset.targets == label)
        if len(members) < 2:
            raise DatasetError(
                f"{dataset.root / dataset.labels[label]}: only {len(members)} image(s); "
                "a validation split needs at least 2 per class"
            )
        take = min(len(members) - 1, max(1, round(fraction * len(members))))
        val_index.extend(rng.permutation(members)[:take].tolist())
    val_mask = np.zeros(len(dataset), dtype=bool)
    val_mask[val_index] = True
    train = dataset.subset(
        np.flatnonzero(~val_mask), f" (train part of seed-{seed} split)", keep_skipped=True
    )
    val = dataset.subset(np.flatnonzero(val_mask), f" (val part of seed-{seed} split, {fraction:g})")
    return train, val


def class_weights(targets: np.ndarray, num_classes: int, mode: str) -> np.ndarray:
    """Per-class loss weights: 'balanced' = n/(k*count), 'sqrt' = its square root, 'none' = ones."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    if mode == "none":
        return np.ones(num_classes)
    balanced = len(targets) / (num_classes * np.maximum(counts, 1.0))
    if mode == "balanced":
        return balanced
    if mode == "sqrt":
        return np.sqrt(balanced)
    raise ValueError(f"unknown class-weight mode {mode!r}")
