"""Classifying faces with the ONNX model described by its model card (`model.json` beside `model.onnx`).

The crop must frame a face the way the training images were framed, or accuracy in the wild collapses, so the
framing (`crop` in the card, measured by scripts/measure_framing.py) comes from the card rather than the code.
All pixel normalisation lives inside the ONNX graph: the runtime only crops, converts to grey, resizes and
casts to float32 0-255.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Generic, TypeVar

import cv2
import numpy as np

from ..files import file_digest
from ..schema import EMOTIONS
from .detection import Detection
from .onnx import inference_session

T = TypeVar("T")

BUNDLED_PACKAGE = "emotion_batch.bundled"
MODEL_FILENAME = "model.onnx"


class ModelUnavailable(Exception):
    """The model or its card is missing or does not fit the contract; the message says which."""


@dataclass(frozen=True)
class CropGeometry:
    """Square crop of side scale * max(w, h), centred on the box centre shifted by offsets in box units."""

    scale: float = 1.2
    offset_x: float = 0.0
    offset_y: float = 0.0


@dataclass(frozen=True)
class ModelCard:
    """What the runtime needs from a model and its card; picklable so workers can rebuild the session."""

    path: Path
    name: str
    sha256: str
    labels: tuple[str, ...]
    height: int
    width: int
    crop: CropGeometry
    #: False when the card has no measured `crop` and the default framing is used.
    crop_from_card: bool


def bundled_model_path() -> Path:
    """The model shipped as package data of emotion_batch.bundled (models/ in the source tree)."""
    try:
        return Path(str(resources.files(BUNDLED_PACKAGE) / MODEL_FILENAME))
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return Path(__file__).resolve().parents[2] / "models" / MODEL_FILENAME


def card_path_for(model_path: str | os.PathLike[str]) -> Path:
    """The card lies beside the model with the same stem: run/model.onnx -> run/model.json."""
    return Path(model_path).with_suffix(".json")


def load_model_card(model_path: str | os.PathLike[str] | None = None) -> ModelCard:
    """Read and validate the card of `model_path` (default: the bundled model)."""
    bundled = model_path is None
    path = bundled_model_path() if model_path is None else Path(model_path).expanduser()
    if not path.is_file():
        hint = " (the bundled model is missing from this installation)" if bundled else ""
        raise ModelUnavailable(f"model file not found: {path}{hint}")
    card_path = card_path_for(path)
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelUnavailable(f"model card not found: {card_path} (expected beside {path.name})") from exc
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot read model card {card_path}: {exc}") from exc

    labels = tuple(card.get("labels") or ())
    if sorted(labels) != sorted(EMOTIONS):
        raise ModelUnavailable(
            f"model card {card_path} labels {list(labels)} do not match the output schema {list(EMOTIONS)}"
        )
    spec = card.get("input") or {}
    try:
        height, width = int(spec["height"]), int(spec["width"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelUnavailable(f"model card {card_path} lacks input.height/input.width") from exc
    if int(spec.get("channels", 1)) != 1:
        raise ModelUnavailable(f"model card {card_path}: only greyscale (channels 1) models are supported")
    crop_spec = card.get("crop")
    try:
        fields = ("scale", "offset_x", "offset_y")  # other keys (e.g. provenance notes) are ignored
        crop = (
            CropGeometry(**{k: float(crop_spec[k]) for k in fields if k in crop_spec})
            if crop_spec
            else CropGeometry()
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelUnavailable(f"model card {card_path}: invalid crop {crop_spec!r}") from exc
    return ModelCard(
        path=path,
        name=f"bundled:{path.name}" if bundled else str(path),
        sha256=file_digest(path),
        labels=labels,
        height=height,
        width=width,
        crop=crop,
        crop_from_card=bool(crop_spec),
    )


def crop_face(image: np.ndarray, face: Detection, crop: CropGeometry) -> np.ndarray:
    """Cut the card's square around a face, replicating edge pixels where the square leaves the frame."""
    side = max(1, round(crop.scale * max(face.w, face.h)))
    cx = face.x + face.w / 2 + crop.offset_x * face.w
    cy = face.y + face.h / 2 + crop.offset_y * face.h
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x1, y1 = x0 + side, y0 + side
    height, width = image.shape[:2]
    # Clamp the visible part so it holds at least one pixel, then pad the rest by replication.
    vx0, vy0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    vx1, vy1 = max(min(x1, width), vx0 + 1), max(min(y1, height), vy0 + 1)
    patch = image[vy0:vy1, vx0:vx1]
    pads = (vy0 - y0, y1 - vy1, vx0 - x0, x1 - vx1)
    if any(p > 0 for p in pads):
        top, bottom, left, right = (max(p, 0) for p in pads)
        patch = cv2.copyMakeBorder(patch, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return patch


class Classifier:
    """One onnxruntime session per process (single-threaded: parallelism comes from worker processes)."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        try:
            self._session = inference_session(str(card.path))
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelUnavailable(f"cannot load model {card.path}: {exc}") from exc
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        batch_dim = model_input.shape[0] if model_input.shape else None
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        # Columns of the model's output, reordered to the schema's emotion order.
        self._order = [card.labels.index(e) for e in EMOTIONS]

    def prepare(self, image: np.ndarray, faces: list[Detection]) -> np.ndarray:
        """Crops for a frame's faces as the model's [N, H, W, 1] float32 0-255 input."""
        size = (self.card.width, self.card.height)
        batch = np.empty((len(faces), self.card.height, self.card.width, 1), dtype=np.float32)
        for i, face in enumerate(faces):
            patch = crop_face(image, face, self.card.crop)
            if patch.ndim == 3:
                patch = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
            shrinking = patch.shape[0] > size[1] or patch.shape[1] > size[0]
            interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
            batch[i, :, :, 0] = cv2.resize(patch, size, interpolation=interpolation)
        return batch

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities [N, 7] in schema order (angry ... surprise)."""
        if len(batch) == 0:
            return np.empty((0, len(EMOTIONS)), dtype=np.float32)
        if self._fixed_batch == 1 and len(batch) > 1:
            out = np.concatenate([self._session.run(None, {self._input_name: b[None]})[0] for b in batch])
        else:
            out = self._session.run(None, {self._input_name: batch})[0]
        return np.asarray(out, dtype=np.float64)[:, self._order]

    def classify(self, image: np.ndarray, faces: list[Detection]) -> np.ndarray:
        """All faces of one frame in a single batch."""
        return self.predict(self.prepare(image, faces))


#: Faces per classifier call when frames are batched together. Per face, the bundled model costs about 0.9 ms
#: at 16 faces against 1.1 ms at the 3 faces a frame typically has (one thread); its outputs do not depend on
#: the batch (checked in tests/runtime/test_classification.py).
BATCH_FACES = 16
#: Frames held back at most, bounding the delay and what is held (a frame's image, when the caller keeps it).
BATCH_FRAMES = 8


@dataclass
class FrameBatcher(Generic[T]):
    """Classifies the faces of consecutive frames together, handing back each frame's item with its probabilities
    in the order the frames came in.

    `add` returns the frames completed by that call (often none); `flush` the rest, at the end of a file.
    """

    classifier: Classifier
    max_faces: int = BATCH_FACES
    max_frames: int = BATCH_FRAMES
    _items: list[tuple[T, int]] = field(default_factory=list)
    _crops: list[np.ndarray] = field(default_factory=list)
    _faces: int = 0

    def add(self, item: T, image: np.ndarray, faces: list[Detection]) -> list[tuple[T, np.ndarray]]:
        if faces:
            self._crops.append(self.classifier.prepare(image, faces))
        self._items.append((item, len(faces)))
        self._faces += len(faces)
        if self._faces >= self.max_faces or len(self._items) >= self.max_frames:
            return self.flush()
        return []

    def flush(self) -> list[tuple[T, np.ndarray]]:
        probs = (
            self.classifier.predict(np.concatenate(self._crops))
            if self._crops
            else np.empty((0, len(EMOTIONS)), dtype=np.float64)
        )
        done, start = [], 0
        for item, count in self._items:
            done.append((item, probs[start : start + count]))
            start += count
        self._items, self._crops, self._faces = [], [], 0
        return done
