"""Moved to `emotion_batch.vision.classification`; this import path stays for `emotion_train` and scripts/."""

from .vision.classification import (
    BATCH_FACES,
    Classifier,
    CropGeometry,
    FrameBatcher,
    ModelCard,
    ModelUnavailable,
    bundled_model_path,
    card_path_for,
    crop_face,
    load_model_card,
)

__all__ = [
    "BATCH_FACES",
    "Classifier",
    "CropGeometry",
    "FrameBatcher",
    "ModelCard",
    "ModelUnavailable",
    "bundled_model_path",
    "card_path_for",
    "crop_face",
    "load_model_card",
]
