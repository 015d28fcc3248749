"""Scheduling choices of the local pool: biggest files first, one decoder thread per worker when several run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from emotion_batch.batch.executors import expected_cost
from emotion_batch.batch.prestart import worker_environment
from emotion_batch.media.decoding import DECODER_THREADS_ENV
from emotion_batch.media.sources import Source


def source(tmp_path: Path, name: str, size: int, media_type: str | None) -> Source:
    path = tmp_path / name
    path.write_bytes(b"x" * size)
    return Source(path, name, media_type)


def test_bigger_videos_first_then_images_then_skipped(tmp_path: Path) -> None:
    files = [
        source(tmp_path, "notes.txt", 10_000, None),
        source(tmp_path, "small.mp4", 1_000, "video"),
        source(tmp_path, "photo.jpg", 20_000, "image"),
        source(tmp_path, "big.mp4", 5_000, "video"),
        Source(tmp_path / "gone.mp4", "gone.mp4", "video"),  # vanished since discovery
    ]
    order = [s.source for s in sorted(files, key=expected_cost, reverse=True)]
    assert order == ["big.mp4", "small.mp4", "photo.jpg", "notes.txt", "gone.mp4"]


@pytest.mark.parametrize(
    ("workers", "preset", "expected"),
    [
        (1, None, None),  # one worker: FFmpeg may use every core for it
        (2, None, "1"),  # every core has a worker already
        (4, "3", None),  # the user's own setting wins (left to the inherited environment)
    ],
)
def test_decoder_threads_in_worker_environment(monkeypatch, workers, preset, expected) -> None:
    if preset is None:
        monkeypatch.delenv(DECODER_THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(DECODER_THREADS_ENV, preset)
    environment = worker_environment(1234, workers)
    assert environment.get(DECODER_THREADS_ENV) == expected
    assert environment.get("OPENCV_IO_MAX_IMAGE_PIXELS", "1234") == "1234"


def test_starting_the_worker_server_imports_nothing_heavy() -> None:
    """The command starts the fork server before its own imports; that must not import them itself."""
    code = (
        "import sys; from emotion_batch.batch.prestart import start_worker_server; "
        "heavy = [m for m in ('cv2', 'numpy', 'onnxruntime', 'pandas', 'av') if m in sys.modules]; "
        "print(','.join(heavy) or 'none')"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "none"
