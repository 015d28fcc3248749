"""Tiny generated folder datasets and one shared real training run for the trainer's tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the trainer needs the 'train' extra: pip install .[train]")

CLASSES = ("bars_h", "bars_v", "ring")
SIZE = 40


def pattern_image(kind: str, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A noisy greyscale image whose class is visible in its shape: horizontal bars, vertical bars or a ring."""
    image = np.full((size, size), rng.integers(40, 110), dtype=np.float32)
    shade = float(rng.integers(170, 250))
    if kind == "ring":
        centre = tuple(int(c) for c in rng.integers(size // 3, 2 * size // 3, size=2))
        cv2.circle(image, centre, int(rng.integers(size // 6, size // 3)), shade, int(rng.integers(2, 4)))
    else:
        offset = int(rng.integers(0, 6))
        for k in range(offset, size, 8):
            if kind == "bars_h":
                image[k : k + 3, :] = shade
            else:
                image[:, k : k + 3] = shade
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(root: Path, per_class: int, seed: int, classes=CLASSES, prefix: str = "img") -> Path:
    rng = np.random.default_rng(seed)
    for kind in classes:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(folder / f"{prefix}_{i:03d}.png"), pattern_image(kind, rng))
    return root


def train_command(data: Path, out: Path, *extra: str, backbone: str = "cnn3") -> list[str]:
    """The smallest real configuration: 40 px images upsampled to 48 in-graph, a backbone from scratch.

    ``cnn3`` by default: the workflow tests (resume, retries, labels, distillation, augmentation) then pay
    seconds, not minutes, for TensorFlow to trace the training step. `trained_run` and the export tests
    cover the MobileNets.
    """
    return [
        sys.executable,
        "-m",
        "emotion_train.cli",
        str(data),
        "--out",
        str(out),
        "--backbone",
        backbone,
        "--alpha",
        "0.5",
        "--input-size",
        "48",
        "--weights",
        "none",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--bn-momentum",
        "0.9",
        "--augment",
        "0",
        "--label-smoothing",
        "0",
        "--dropout",
        "0.1",
        "--seed",
        "1",
        *extra,
    ]


def run_env() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return env


@pytest.fixture(scope="session", autouse=True)
def _dataset_cache_in_tmp(tmp_path_factory):
    """Decoded-dataset caches go to a temporary folder, never into the user's ~/.cache."""
    saved = os.environ.get("EMOTION_TRAIN_CACHE")
    os.environ["EMOTION_TRAIN_CACHE"] = str(tmp_path_factory.mktemp("dataset-cache"))
    yield
    if saved is None:
        os.environ.pop("EMOTION_TRAIN_CACHE", None)
    else:
        os.environ["EMOTION_TRAIN_CACHE"] = saved


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("patterns")
    train = make_dataset(base / "train", per_class=80, seed=0)
    (train / "ring" / "broken.png").write_text("this is not an image")  # must be skipped and counted
    return {
        "train": train,
        "test": make_dataset(base / "test", per_class=30, seed=1),
        "base": base,
    }


@pytest.fixture(scope="session")
def trained_run(datasets, tmp_path_factory) -> Path:
    """One real end-to-end `emotion-train` subprocess run of a MobileNet, shared by the tests that inspect its
    outputs."""
    out = tmp_path_factory.mktemp("run") / "run"
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(datasets["base"] / "cache"))
    result = subprocess.run(
        train_command(
            datasets["train"],
            out,
            "--test",
            str(datasets["test"]),
            "--epochs",
            "8",
            backbone="mobilenetv3small",
        ),
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def cnn3_run(datasets, tmp_path_factory) -> Path:
    """A real 3-epoch `cnn3` run with a validation folder: a quick start for --init-from and soups."""
    out = tmp_path_factory.mktemp("cnn3") / "run"
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(datasets["base"] / "cache"))
    result = subprocess.run(
        train_command(datasets["train"], out, "--val", str(datasets["test"]), "--epochs", "3"),
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def pytest_collection_modifyitems(items):
    """Every test that needs a real training run or a real CLI export (subprocesses, TensorFlow) is slow."""
    for item in items:
        if {"trained_run", "cnn3_run", "cli_run", "real_images"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
