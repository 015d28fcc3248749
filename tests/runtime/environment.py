"""Where the tests find shared data and the installed command, and constants shared by several test files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", REPO.parent / "shared"))
SCHEMA_LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
#: A label order different from the schema's, to prove the runtime maps columns by name.
SHUFFLED_LABELS = ["surprise", "angry", "happy", "disgust", "sad", "fear", "neutral"]
#: Frame durations of the variable-frame-rate fixture: 25 fps, then 10 fps, then 50 fps.
VFR_DURATIONS = [0.04] * 20 + [0.1] * 15 + [0.02] * 25


def shared_path(*parts: str) -> Path:
    """A path inside the shared folder, or a skip saying where it was looked for."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (set EMOTION_BATCH_SHARED to the shared folder)")
    return path


def run_cli(*args: str | os.PathLike[str], env: dict[str, str] | None = None, timeout: float = 300):
    """Run the installed `emotion-batch` console script (falling back to `python -m emotion_batch`)."""
    exe = shutil.which("emotion-batch")
    command = [exe] if exe else [sys.executable, "-m", "emotion_batch"]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
