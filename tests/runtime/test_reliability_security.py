"""Security: nothing derived from inputs is unpickled, evaluated or run through a shell (ruff's bandit rules);
models load only from the bundled location or a path the user gives; the cached detector is verified before use.

Downloads being verified by sha256 and written atomically is tested in test_fetch.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import emotion_batch
from emotion_batch.digest import sha256_file
from emotion_batch.vision.classification import bundled_model_path
from emotion_batch.vision.fetch import YUNET_FILENAME

from .cli_runs import last_plan, run, summary_of

PACKAGE = Path(emotion_batch.__file__).parent


def test_bandit_rules_pass_on_the_package() -> None:
    """ruff's flake8-bandit rules (S) replace the former hand-written scan: no pickle of input data, eval, shell,
    SQL built from strings. The two pickle uses in batch/isolation.py carry a noqa with their reason."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the test extra)")
    result = subprocess.run(
        [ruff, "check", "--select", "S", "--no-cache", str(PACKAGE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    noqa = [
        line
        for path in PACKAGE.rglob("*.py")
        for line in path.read_text().splitlines()
        if "noqa: S301" in line
    ]
    assert len(noqa) == 2 and all("pickle.loads" in line for line in noqa), noqa


@pytest.mark.slow
def test_models_lying_around_are_never_loaded(
    tmp_path: Path, astronaut_jpg: Path, cli_env, tiny_model: Path
) -> None:
    """A model.onnx in the working directory or among the inputs is ignored: bundled, or what the user names."""
    bundled = bundled_model_path()
    if not bundled.is_file():
        pytest.skip("the bundled model is not built")
    planted = tmp_path / "cwd"
    inputs = tmp_path / "inputs"
    for folder in (planted, inputs):
        folder.mkdir()
        shutil.copy(tiny_model, folder / "model.onnx")
        shutil.copy(tiny_model.with_suffix(".json"), folder / "model.json")
    shutil.copy(astronaut_jpg, inputs / "astronaut.jpg")
    out = tmp_path / "r.csv"
    import subprocess

    from .cli_runs import command

    result = subprocess.run(
        [*command(), str(inputs), "--out", str(out), "--no-charts"],
        cwd=planted, capture_output=True, text=True, env={**__import__("os").environ, **cli_env}, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = summary_of(out)
    assert set(summary["model_sha256"].dropna()) == {sha256_file(bundled)}
    assert summary.loc["model.onnx", "status"] == "skipped"  # an input like any other file, never a model

    given = run(inputs, "--out", tmp_path / "given.csv", "--no-charts", "--model", tiny_model, env=cli_env)
    assert given.returncode == 0, given.stderr
    assert set(summary_of(tmp_path / "given.csv")["model_sha256"].dropna()) == {sha256_file(tiny_model)}


@pytest.mark.slow
def test_a_tampered_cached_detector_is_refused(
    tmp_path: Path, astronaut_jpg: Path, yunet_path: Path, model_args
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    tampered = cache / YUNET_FILENAME
    tampered.write_bytes(yunet_path.read_bytes() + b"\0")
    env = {"EMOTION_BATCH_CACHE_DIR": str(cache), "EMOTION_BATCH_DETECTOR_MODEL": ""}
    result = run(astronaut_jpg, "--out", tmp_path / "r.csv", "--detector", "yunet", *model_args, env=env)
    assert result.returncode == 2
    assert "does not match its pinned sha256" in result.stderr and "models fetch --force" in result.stderr
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "r.csv.state").exists()


@pytest.mark.slow
def test_hostile_file_names_are_just_names(tmp_path: Path, astronaut_jpg: Path, cli_env, model_args) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    names = ["a'); DROP TABLE files;--.jpg", "$(touch PWNED).jpg", "`touch PWNED`.jpg", 'quote",comma.jpg']
    for name in names:
        shutil.copy(astronaut_jpg, inputs / name)
    out = tmp_path / "r.csv"
    for _ in range(2):
        result = run(inputs, "--out", out, "--no-charts", *model_args, env=cli_env)
        assert result.returncode == 0, result.stderr
    assert (last_plan(out)["analysed"], last_plan(out)["kept"]) == (0, 4)
    assert sorted(summary_of(out).index) == sorted(names)
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
