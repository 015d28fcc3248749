"""Moved to `emotion_batch.vision.fetch`; this import path stays for scripts/."""

from .vision.fetch import YUNET_FILENAME, YUNET_SHA256, cached_yunet_path, fetch_yunet

__all__ = ["YUNET_FILENAME", "YUNET_SHA256", "cached_yunet_path", "fetch_yunet"]
