"""Soft training targets from a teacher model: knowledge distillation.

An ensemble beats each of its members but costs one network per member for every face at run time. A
single network trained towards the ensemble's probabilities learns which wrong classes are plausible for
each face (a fearful face that looks surprised), which a one-hot label cannot tell it. The teacher is any
exported model (ONNX). It runs either

- offline (the default): once over the clean training images, averaged with their mirror images, the
  probabilities cached in the run folder so that a resumed run trains on exactly the same targets; or
- online (``--online-teacher``): on every augmented batch, so the target is the teacher's answer on the very
  image the student sees, however the augmentation moved, blurred or shrank it. Augmentation draws depend only
  on (seed, epoch, batch), so a resumed run still sees the same targets; the teacher's digest is pinned.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from emotion_batch.files import atomic_file

from .artifacts import write_json_atomic
from .data import DatasetError
from .export import onnx_session

log = logging.getLogger(__name__)

CACHE_NAME = "teacher_probs.npz"
#: With --online-teacher: the teacher's digest, noted on the first start and checked on --resume.
ONLINE_RECORD_NAME = "online_teacher.json"


def teacher_labels(teacher: Path) -> list[str] | None:
    """The label order from the model card beside the teacher (model.json), if there is one."""
    card = teacher.with_name("model.json")
    if not card.is_file():
        return None
    return json.loads(card.read_text()).get("labels")


def _teacher_session(teacher: Path, threads: int):
    try:
        return onnx_session(teacher, threads=threads)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise DatasetError(f"{teacher}: not a loadable ONNX model ({exc})") from exc


def fit_to_input(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 [N, S, S] -> float32 [N, side, side, 1] in 0-255, resized as the runtime resizes crops."""
    if images.shape[1] != side:
        interpolation = cv2.INTER_AREA if images.shape[1] > side else cv2.INTER_LINEAR
        images = np.stack([cv2.resize(image, (side, side), interpolation=interpolation) for image in images])
    return images[..., None].astype(np.float32)


class Teacher:
    """An exported model (ONNX) that gives training targets: probabilities [N, classes] for uint8 [N, S, S]
    faces, in the training classes' order, each row summing to 1.

    Both kinds of distillation use it: once over the clean training images (`run_teacher`), or on every
    augmented batch during training (`--online-teacher`). Two threads: it runs alone before training, or
    in turn with the training step, never beside it.
    """

    def __init__(self, path: Path, labels: list[str], threads: int = 2):
        expected = teacher_labels(path)
        if expected is not None and list(expected) != list(labels):
            raise DatasetError(
                f"{path}: the teacher's labels {expected} differ from the training classes {labels}; "
                "it must be trained on the same classes in the same order"
            )
        if expected is None:
            log.warning("%s: no model.json beside the teacher; assuming its outputs follow %s", path, labels)
        self.path, self.labels = path, list(labels)
        self._session = _teacher_session(path, threads)
        spec = self._session.get_inputs()[0]
        self._input = spec.name
        self._side = spec.shape[1] if isinstance(spec.shape[1], int) else None

    def _run(self, x: np.ndarray) -> np.ndarray:
        probs = self._session.run(None, {self._input: x})[0]
        if probs.shape[1] != len(self.labels):
            raise DatasetError(
                f"{self.path}: the teacher predicts {probs.shape[1]} classes, the data has {len(self.labels)}"
            )
        return probs

    def __call__(self, images: np.ndarray, mirror: bool = False) -> np.ndarray:
        """Probabilities for uint8 [N, S, S] images; ``mirror`` averages them with the mirror images'."""
        x = fit_to_input(images, self._side or images.shape[1])
        probs = self._run(x)
        if mirror:
            probs = (probs + self._run(x[:, :, ::-1])) / 2
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


def run_teacher(teacher: Path, images: np.ndarray, labels: list[str], batch: int = 256) -> np.ndarray:
    """Teacher probabilities [N, classes] for uint8 [N, S, S] images, averaged with the mirrored images."""
    model = Teacher(teacher, labels)
    return np.concatenate(
        [model(images[start : start + batch], mirror=True) for start in range(0, len(images), batch)]
    )


def _changed_teacher(teacher: Path, cache: Path) -> DatasetError:
    return DatasetError(
        f"{teacher}: the teacher file changed since this run started (its record is in {cache}); restore it, "
        "or start a new run"
    )


def pin_teacher(teacher: Path, teacher_sha256: str, record: Path) -> None:
    """For a teacher that runs during training: note its digest on the first start, and refuse a resumed run
    whose teacher file has changed since (its targets would no longer be the ones trained on so far)."""
    if record.exists():
        if json.loads(record.read_text()).get("teacher_sha256") != teacher_sha256:
            raise _changed_teacher(teacher, record)
        return
    write_json_atomic(record, {"teacher": str(teacher), "teacher_sha256": teacher_sha256})


def cached_teacher_probabilities(
    teacher: Path, teacher_sha256: str, images: np.ndarray, data_hash: str, labels: list[str], cache: Path
) -> np.ndarray:
    """run_teacher's result, computed once per run; a resumed run must find the same teacher and data."""
    if cache.exists():
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["teacher_sha256"]) != teacher_sha256:
                raise _changed_teacher(teacher, cache)
            if str(saved["data_hash"]) == data_hash and len(saved["probs"]) == len(images):
                return saved["probs"]
        log.warning("%s: training data changed since the teacher's targets were cached; recomputing", cache)
    log.info("teacher %s: computing soft targets for %d training images", teacher, len(images))
    probs = run_teacher(teacher, images, labels)
    with atomic_file(cache, suffix=".tmp.npz") as handle:
        np.savez(handle, probs=probs, teacher_sha256=teacher_sha256, data_hash=data_hash)
    return probs


def blend_targets(one_hot: np.ndarray, teacher_probs: np.ndarray, teacher_weight: float) -> np.ndarray:
    """(1 - w) * label + w * teacher: each row still sums to 1; w = 1 trains on the teacher alone."""
    return ((1.0 - teacher_weight) * one_hot + teacher_weight * teacher_probs).astype(np.float32)
