"""A training run killed with SIGKILL mid-way continues with --resume and finishes with a clean history."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time

import pytest

from .conftest import run_env, train_command

pytestmark = pytest.mark.slow
EPOCHS = 12


def test_resume_after_kill(datasets, tmp_path):
    out = tmp_path / "run"
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(tmp_path / "cache"))
    # 12 epochs: enough for the kill to land between the second and the last, a minute less of CI than 40.
    command = train_command(datasets["train"], out, "--epochs", str(EPOCHS), "--patience", "0")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    state_file = out / "checkpoints" / "state.json"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if state_file.exists() and json.loads(state_file.read_text())["epochs_done"] >= 2:
                break
            assert process.poll() is None, "training ended before it could be interrupted"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    interrupted = json.loads(state_file.read_text())
    assert 2 <= interrupted["epochs_done"] < EPOCHS and not interrupted["finished"]

    command = train_command(datasets["train"], out, "--resume", "--epochs", str(EPOCHS))
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(state_file.read_text())
    assert state["finished"] and state["epochs_done"] == EPOCHS
    assert [row["epoch"] for row in state["history"]] == list(range(1, EPOCHS + 1))
    log_text = (out / "train.log").read_text()
    assert f"resuming from last-epoch{interrupted['epochs_done']:03d}" in log_text
    # The optimiser's iteration count (and so the cosine schedule's position) carried over the kill.
    steps = state["history"][0]["iterations"]
    assert [row["iterations"] for row in state["history"]] == [steps * e for e in range(1, EPOCHS + 1)]
    lrs = [row["lr"] for row in state["history"]]
    assert all(later <= earlier for earlier, later in itertools.pairwise(lrs[1:]))  # decays after warm-up
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["epochs_run"] == EPOCHS
    assert card["training"]["data"]["train"]["sha256"] == card["training"]["data"]["val"]["sha256"]
