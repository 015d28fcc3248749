"""What a newcomer meets first with emotion-train: offline ImageNet weights, a failed first try, a bad schedule."""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner

from emotion_train.cli import main

from .conftest import run_env, train_command


@pytest.mark.slow
def test_imagenet_weights_offline_is_one_line_naming_the_alternatives(datasets, tmp_path):
    """Keras's download fails (a proxy on a closed loopback port stands in for 'no internet')."""
    env = dict(
        run_env(),
        KERAS_HOME=str(tmp_path / "keras"),
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        EMOTION_TRAIN_CACHE=str(tmp_path / "cache"),
    )
    command = train_command(datasets["train"], tmp_path / "run", "--epochs", "4", "--head-epochs", "1")
    command[command.index("--weights") + 1] = "imagenet"
    command[command.index("--backbone") + 1] = "mobilenet"
    command[command.index("--alpha") + 1] = "0.25"
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1
    assert "--weights PATH.h5" in error[0] and "--weights none" in error[0]


@pytest.mark.slow
def test_a_run_that_failed_before_its_first_epoch_does_not_block_the_retry(datasets, tmp_path):
    """The first try dies at once (unusable --weights is caught later than parsing); the retry trains."""
    run = tmp_path / "run"
    env = dict(
        run_env(),
        KERAS_HOME=str(tmp_path / "keras"),
        HTTPS_PROXY="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        EMOTION_TRAIN_CACHE=str(tmp_path / "cache"),
    )
    failing = train_command(
        datasets["train"],
        run,
        "--epochs",
        "4",
        "--head-epochs",
        "1",
        "--lr",
        "1e-2",
        backbone="mobilenetv3small",
    )
    failing[failing.index("--weights") + 1] = "imagenet"
    first = subprocess.run(failing, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 1 and (run / "config.json").exists()

    for extra in ((), ("--resume",)):  # neither a plain retry nor --resume may keep the failed configuration
        retry = subprocess.run(
            train_command(datasets["train"], run, "--epochs", "2", *extra),
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        assert retry.returncode == 0, retry.stderr[-3000:]
        config = json.loads((run / "config.json").read_text())
        assert config["train"]["model"]["weights"] == "none"
        assert config["train"]["lr"] != 1e-2
        if not extra:  # the second pass finds a finished run and resumes nothing
            (run / "checkpoints" / "state.json").unlink()


def test_the_small_cnn_has_no_pretrained_weights(tmp_path):
    result = CliRunner().invoke(
        main, [str(tmp_path), "--out", str(tmp_path / "run"), "--backbone", "cnn3", "--weights", "imagenet"]
    )
    assert result.exit_code == 2
    assert "--backbone cnn3 has no pretrained weights" in result.output and not (tmp_path / "run").exists()


def test_epochs_within_the_warmup_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            str(tmp_path),
            "--out",
            str(tmp_path / "run"),
            "--weights",
            "none",
            "--epochs",
            "2",
            "--warmup-epochs",
            "2",
        ],
    )
    assert result.exit_code == 2
    assert "--warmup-epochs" in result.output and "raise --epochs" in result.output
