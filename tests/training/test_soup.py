"""`emotion-train soup`: real runs fine-tuned from one start, their weights averaged into one exported network."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from emotion_batch.digest import sha256_file
from emotion_train.cli import main
from emotion_train.data import load_folder
from emotion_train.export import onnx_probabilities
from emotion_train.soup import SoupError, average_weights

from .conftest import SIZE, run_env, train_command

pytestmark = pytest.mark.slow


def _train(datasets, out: Path, *extra: str) -> Path:
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(datasets["base"] / "cache"))
    result = subprocess.run(
        train_command(datasets["train"], out, "--val", str(datasets["test"]), *extra),
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def ingredients(datasets, cnn3_run, tmp_path_factory) -> tuple[Path, Path]:
    """A run and a run fine-tuned from it with another seed and learning rate: what a soup is for (the shipped
    model's soups mixed a run with the run it started from)."""
    start = str(cnn3_run / "checkpoints" / "best.keras")
    second = _train(
        datasets,
        tmp_path_factory.mktemp("soup") / "b",
        "--epochs",
        "2",
        "--init-from",
        start,
        "--seed",
        "9",
        "--lr",
        "2e-3",
    )
    return cnn3_run, second


def soup_command(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "emotion_train.cli", "soup", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=600,
    )


def test_soup_is_the_weighted_mean_of_its_runs_exported_and_measured(datasets, ingredients, tmp_path):
    import keras

    first, second = ingredients
    out = tmp_path / "soup"
    result = soup_command(
        first, second, "--out", out, "--weight", "3", "--weight", "1", "--val", datasets["test"]
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (
        "parity: max |onnx - keras|" in result.stdout and f"ingredient {first}: val accuracy" in result.stdout
    )

    # The exported graph computes what a network with 0.75 * first + 0.25 * second as its weights computes.
    nets = [keras.models.load_model(run / "checkpoints" / "best.keras", compile=False) for run in ingredients]
    expected = keras.models.clone_model(nets[0])
    expected.set_weights([0.75 * a + 0.25 * b for a, b in zip(nets[0].get_weights(), nets[1].get_weights())])
    test = load_folder(datasets["test"], SIZE)
    x = test.images[..., None].astype(np.float32)
    got = onnx_probabilities(out / "model.onnx", x)
    assert json.loads((out / "model.json").read_text())["export"]["flip_tta"]  # as the runs were exported
    mirrored = (expected.predict(x, verbose=0) + expected.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(got, mirrored, atol=1e-5)
    assert not np.allclose(got, onnx_probabilities(first / "model.onnx", x), atol=1e-3)  # not just one run
    assert np.mean(got.argmax(axis=1) == test.targets) > 0.75  # averaging kept a working network

    card = json.loads((out / "model.json").read_text())
    assert [i["weight"] for i in card["ingredients"]] == [0.75, 0.25]
    assert card["ingredients"][0]["checkpoint_sha256"] == sha256_file(first / "checkpoints" / "best.keras")
    assert card["labels"] == json.loads((first / "model.json").read_text())["labels"]
    assert card["metrics"]["val"]["accuracy"] == pytest.approx(
        float(np.mean(got.argmax(axis=1) == test.targets))
    )
    assert card["export"]["max_abs_diff"] <= 1e-4
    reloaded = keras.models.load_model(
        out / "checkpoints" / "best.keras", compile=False
    )  # re-export, --init-from
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected.predict(x, verbose=0), atol=1e-5)


def test_runs_of_other_architectures_are_refused(datasets, ingredients, trained_run, tmp_path):
    out = tmp_path / "soup"  # trained_run is a MobileNetV3Small, the fine-tunes are cnn3
    result = soup_command(ingredients[0], trained_run, "--out", out, "--val", datasets["test"])
    assert result.returncode == 1
    assert f"{trained_run}: backbone 'mobilenetv3small' differs from" in result.stderr
    assert "only runs of one architecture" in result.stderr
    assert not (out / "model.onnx").exists()


FRAMING = {"scale": 0.93, "offset_x": -0.01, "offset_y": -0.02}


@pytest.mark.parametrize(
    ("second_crop", "accepted"),
    [
        (
            {**FRAMING, "inherited_from": "runs/a/model.json"},
            True,
        ),  # the same framing, with a note on its source
        ({**FRAMING, "scale": 1.2}, False),
    ],
)
def test_ingredients_must_frame_faces_alike(datasets, ingredients, tmp_path, second_crop, accepted):
    runs = []
    for run, crop in zip(ingredients, (FRAMING, second_crop), strict=True):
        copy = tmp_path / run.name
        shutil.copytree(run, copy)
        card = json.loads((copy / "model.json").read_text())
        (copy / "model.json").write_text(json.dumps({**card, "crop": crop}))
        runs.append(copy)
    out = tmp_path / "soup"
    result = soup_command(*runs, "--out", out, "--val", datasets["test"])
    if accepted:
        assert result.returncode == 0, result.stderr[-4000:]
        assert json.loads((out / "model.json").read_text())["crop"] == FRAMING
    else:
        assert result.returncode == 1 and f"{runs[1]}: its card's crop differs" in result.stderr
        assert not (out / "model.onnx").exists()


def test_unfinished_run_is_refused(ingredients, datasets, tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    result = soup_command(ingredients[0], empty, "--out", tmp_path / "soup", "--val", datasets["test"])
    assert result.returncode == 1
    assert "no checkpoints/best.keras; a soup needs finished training runs" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weight", "1"], "1 values for 2 runs"),
        ([], "give --val DIR"),
    ],
)
def test_usage_errors(tmp_path, extra, message):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run.mkdir()
    args = ["soup", *map(str, runs), "--out", str(tmp_path / "soup"), *extra]
    if message != "give --val DIR":
        args += ["--val", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "soup").exists()


def test_average_weights_needs_the_same_tensors():
    a, b = [np.ones((2, 3), np.float32)], [np.zeros((3, 2), np.float32)]
    with pytest.raises(SoupError, match="differ in number or shape"):
        average_weights([a, b], [0.5, 0.5])
    mean = average_weights([a, [np.zeros((2, 3), np.float32)]], [0.25, 0.75])
    np.testing.assert_allclose(mean[0], 0.25)
    assert mean[0].dtype == np.float32
