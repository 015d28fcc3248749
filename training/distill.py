"""Soft training targets from a teacher model: offline knowledge distillation.

An ensemble beats each of its members but costs one network per member for every face at run time. A
single network trained towards the ensemble's probabilities learns which wrong classes are plausible for
each face (a fearful face that looks surprised), which a one-hot label cannot tell it. The teacher is any
exported model: its ONNX file runs once over the training images (averaged with their mirror images), and
the probabilities are cached in the run folder so that a resumed run trains on exactly the same targets.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from .data import DatasetError
from .export import onnx_session

log = logging.getLogger(__name__)

CACHE_NAME = "teacher_probs.npz"


def teacher_labels(teacher: Path) -> list[str] | None:
    """The label order from the model card beside the teacher (model.json), if there is one."""
    card = teacher.with_name("model.json")
    if not card.is_file():
        return None
    return json.loads(card.read_text()).get("labels")


def _teacher_session(teacher: Path):
    try:
        return onnx_session(teacher, threads=2)  # runs before training starts, alone on the machine
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise DatasetError(f"{teacher}: not a loadable ONNX model ({exc})") from exc


def _fit_to_input(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 [N, S, S] -> float32 [N, side, side, 1] in 0-255, resized as the runtime resizes crops."""
    if images.shape[1] != side:
        interpolation = cv2.INTER_AREA if images.shape[1] > side else cv2.INTER_LINEAR
        images = np.stack([cv2.resize(image, (side, side), interpolation=interpolation) for image in images])
    return images[..., None].astype(np.float32)


def run_teacher(teacher: Path, images: np.ndarray, labels: list[str], batch: int = 256) -> np.ndarray:
    """Teacher probabilities [N, classes] for uint8 [N, S, S] images, averaged with the mirrored images."""
    expected = teacher_labels(teacher)
    if expected is not None and list(expected) != list(labels):
        raise DatasetError(
            f"{teacher}: the teacher's labels {expected} differ from the training classes {labels}; "
            "it must be trained on the same classes in the same order"
        )
    session = _teacher_session(teacher)
    spec = session.get_inputs()[0]
    side = spec.shape[1] if isinstance(spec.shape[1], int) else images.shape[1]
    out = []
    for start in range(0, len(images), batch):
        chunk = _fit_to_input(images[start : start + batch], side)
        probs = session.run(None, {spec.name: chunk})[0] + session.run(None, {spec.name: chunk[:, :, ::-1]})[0]
        out.append(probs / 2)
    probs = np.concatenate(out).astype(np.float32)
    if probs.shape[1] != len(labels):
        raise DatasetError(f"{teacher}: the teacher predicts {probs.shape[1]} classes, the data has {len(labels)}")
    if expected is None:
        log.warning("%s: no model.json beside the teacher; assuming its outputs follow %s", teacher, labels)
    return probs / probs.sum(axis=1, keepdims=True)


def cached_teacher_probabilities(teacher: Path, teacher_sha256: str, images: np.ndarray, data_hash: str,
                                 labels: list[str], cache: Path) -> np.ndarray:
    """run_teacher's result, computed once per run; a resumed run must find the same teacher and data."""
    if cache.exists():
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["teacher_sha256"]) != teacher_sha256:
                raise DatasetError(
                    f"{teacher}: the teacher file changed since this run started (its targets are cached in "
                    f"{cache}); restore it, or start a new run"
                )
            if str(saved["data_hash"]) == data_hash and len(saved["probs"]) == len(images):
                return saved["probs"]
        log.warning("%s: training data changed since the teacher's targets were cached; recomputing", cache)
    log.info("teacher %s: computing soft targets for %d training images", teacher, len(images))
    probs = run_teacher(teacher, images, labels)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, probs=probs, teacher_sha256=teacher_sha256, data_hash=data_hash)
    tmp.replace(cache)
    return probs


def blend_targets(one_hot: np.ndarray, teacher_probs: np.ndarray, teacher_weight: float) -> np.ndarray:
    """(1 - w) * label + w * teacher: each row still sums to 1; w = 1 trains on the teacher alone."""
    return ((1.0 - teacher_weight) * one_hot + teacher_weight * teacher_probs).astype(np.float32)
