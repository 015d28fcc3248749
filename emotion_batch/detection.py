"""Moved to `emotion_batch.vision.detection`; this import path stays for `emotion_train` and scripts/."""

from .vision.detection import (
    Detection,
    Detector,
    DetectorSpec,
    DetectorUnavailable,
    OpenCVYuNetDetector,
    YuNetDetector,
    create_detector,
    locate_yunet,
    resolve_detector,
)

__all__ = [
    "Detection",
    "Detector",
    "DetectorSpec",
    "DetectorUnavailable",
    "OpenCVYuNetDetector",
    "YuNetDetector",
    "create_detector",
    "locate_yunet",
    "resolve_detector",
]
