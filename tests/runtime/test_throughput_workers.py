"""--workers defaults to the cores this process may use."""

from __future__ import annotations

import os

from emotion_batch.defaults import DEFAULT_WORKERS, usable_cores

from .environment import run_cli


def test_default_workers_is_the_usable_cores() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cores() == expected == DEFAULT_WORKERS >= 1


def test_cli_help_shows_the_default() -> None:
    result = run_cli("analyze", "--help")
    assert result.returncode == 0
    assert f"default: {DEFAULT_WORKERS};" in " ".join(result.stdout.split())
