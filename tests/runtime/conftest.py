"""Fixtures for the runtime tests: generated media, the shared data folder, the detector and the models.

Shared data (real photos/videos, the YuNet file) is found through $EMOTION_BATCH_SHARED, default ../shared
beside the repository; tests that need it skip with the reason when it is absent, so a fresh clone passes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from emotion_batch.vision.classification import bundled_model_path
from emotion_batch.vision.fetch import YUNET_FILENAME, cached_yunet_path

from .environment import SHARED, SHUFFLED_LABELS, VFR_DURATIONS, shared_path
from .media_factory import (
    astronaut_bgr,
    no_face_bgr,
    write_moving_face_video,
    write_tiny_model,
    write_vfr_video,
)


@pytest.fixture(scope="session")
def yunet_path() -> Path:
    """The YuNet ONNX file from $EMOTION_BATCH_DETECTOR_MODEL, the shared folder, or the user cache."""
    env = os.environ.get("EMOTION_BATCH_DETECTOR_MODEL")
    if env and Path(env).is_file():
        return Path(env)
    if not SHARED.joinpath("detectors", YUNET_FILENAME).is_file() and cached_yunet_path().is_file():
        return cached_yunet_path()  # installed by `emotion-batch models fetch`
    return shared_path("detectors", YUNET_FILENAME)


@pytest.fixture
def detector_env(yunet_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Points detection at YuNet through the environment, with an empty private cache folder."""
    monkeypatch.setenv("EMOTION_BATCH_DETECTOR_MODEL", str(yunet_path))
    monkeypatch.setenv("EMOTION_BATCH_CACHE_DIR", str(tmp_path / "cache"))
    return yunet_path


@pytest.fixture(scope="module")
def cli_env(yunet_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for running the command: the YuNet file, and an empty private cache."""
    return {
        "EMOTION_BATCH_DETECTOR_MODEL": str(yunet_path),
        "EMOTION_BATCH_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
    }


@pytest.fixture(scope="module")
def model_args(request: pytest.FixtureRequest) -> list[str]:
    """The bundled model when it exists (the real thing), else the tiny contract model (needs onnx)."""
    if bundled_model_path().is_file():
        return []
    return ["--model", str(request.getfixturevalue("tiny_model"))]


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    """The bundled model (models/model.onnx); skipped until the trainer has produced it."""
    path = bundled_model_path()
    if not path.is_file() or not path.with_suffix(".json").is_file():
        pytest.skip(f"bundled model not built yet: {path} (+ model.json); run the trainer to create it")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real ONNX model following the contract, with labels in a non-schema order."""
    pytest.importorskip("onnx", reason="the onnx package builds the tiny test model (pip install onnx)")
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.onnx", SHUFFLED_LABELS)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def astronaut_jpg(media_dir: Path) -> Path:
    path = media_dir / "astronaut.jpg"
    cv2.imwrite(str(path), astronaut_bgr())
    return path


@pytest.fixture(scope="session")
def moving_face_video(media_dir: Path):
    """4 s, 25 fps, 640x360 mp4 with the astronaut sliding 340 px to the right."""
    return write_moving_face_video(media_dir / "moving_face.mp4")


@pytest.fixture(scope="session")
def vfr_video(media_dir: Path) -> tuple[Path, list[float]]:
    """A variable-frame-rate mp4 and the presentation time of each of its frames."""
    path = media_dir / "vfr.mp4"
    return path, write_vfr_video(path, VFR_DURATIONS)


@pytest.fixture(scope="session")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory, astronaut_jpg: Path, moving_face_video) -> Path:
    """The end-to-end input: a video, a face photo, a no-face photo, a fake video and a text file."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "clips").mkdir()
    shutil.copy(moving_face_video.path, root / "clips" / "moving_face.mp4")
    shutil.copy(astronaut_jpg, root / "astronaut.jpg")
    cv2.imwrite(str(root / "rocket_no_face.png"), no_face_bgr())
    (root / "clips" / "not_a_video.mp4").write_text("this is a text file, not a video\n")
    (root / "notes.txt").write_text("field notes\n")
    return root


@pytest.fixture
def invoke() -> Iterator[Callable[..., Any]]:
    """The command run in this process through click's CliRunner (for usage and configuration errors: no
    process start-up); the `emotion_batch` logger the command configures is put back afterwards."""
    from click.testing import CliRunner

    from emotion_batch.cli import main

    logger = logging.getLogger("emotion_batch")
    saved = (list(logger.handlers), logger.propagate, logger.level)

    def run(*args: object, env: dict[str, str] | None = None) -> Any:
        return CliRunner().invoke(main, [str(a) for a in args], env=env)

    yield run
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.propagate, logger.level = saved[1], saved[2]
