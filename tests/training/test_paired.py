"""Paired comparison of two models' benchmark results (training/paired.py, scripts/compare_models.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emotion_train.generalisation import outcomes
from emotion_train.paired import paired_differences

from ..runtime.environment import shared_path
from .test_ensemble import make_member

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"


def test_outcomes_mark_each_face_of_the_split():
    probs = np.eye(3)[[0, 2, 1]]  # predicted classes 0, 2, 1 for faces 0, 2, 3
    targets = np.array([0, 1, 1, -1])  # face 3 has no label (no FER+ majority): not scored
    assert outcomes(probs, targets, np.array([0, 2, 3]), 4) == "1-0-"
    assert outcomes(np.zeros((0, 3)), targets, np.array([], int), 4) == "----"


def _strings(
    rng: np.random.Generator, n: int, p_a: float, p_b: float, shared: float = 0.8
) -> tuple[str, str]:
    """Two models' outcomes that agree on most faces, as two related models do."""
    a = rng.random(n) < p_a
    b = np.where(rng.random(n) < shared, a, rng.random(n) < p_b)
    return "".join("1" if x else "0" for x in a), "".join("1" if x else "0" for x in b)


@pytest.mark.parametrize(
    ("p_b", "clear"),
    [
        (0.70, False),  # the same model twice, in effect: the interval holds zero
        (0.95, True),  # far better on most faces: the interval leaves zero out
    ],
)
def test_interval_says_whether_a_difference_is_beyond_chance(p_b, clear):
    a, b = _strings(np.random.default_rng(1), 2000, 0.7, p_b)
    (row,) = paired_differences({"clean": a}, {"clean": b})
    assert row.a == pytest.approx(a.count("1") / 2000) and row.b == pytest.approx(b.count("1") / 2000)
    assert row.low <= row.difference <= row.high
    assert row.clear is clear


def test_identical_results_differ_by_exactly_nothing():
    a, _ = _strings(np.random.default_rng(2), 500, 0.6, 0.6)
    (row,) = paired_differences({"clean": a}, {"clean": a})
    assert (row.difference, row.low, row.high, row.clear) == (0.0, 0.0, 0.0, False)


def test_faces_scored_by_only_one_model_are_left_out_and_the_mean_averages_conditions():
    a = {"x": "11-0", "y": "1100"}
    b = {"x": "1-10", "y": "0101"}
    rows = {r.name: r for r in paired_differences(a, b, mean_of=("x", "y"), draws=200)}
    assert rows["x"].images == 2 and (rows["x"].a, rows["x"].b) == (0.5, 0.5)  # faces 0 and 3
    assert (rows["y"].a, rows["y"].b) == (0.5, 0.5)
    assert rows["mean"].a == pytest.approx(0.5) and rows["mean"].images == 4


@pytest.mark.parametrize(
    ("a", "b", "words"),
    [
        ({"x": "101"}, {"x": "1010"}, "different numbers of faces"),
        ({"x": "10a"}, {"x": "101"}, "only '1', '0' and '-'"),
    ],
)
def test_results_that_do_not_line_up_are_refused(a, b, words):
    with pytest.raises(ValueError, match=words):
        paired_differences(a, b)


def _evaluate(model: Path, out: Path, fer: Path) -> dict:
    result = subprocess.run(
        [sys.executable, SCRIPTS / "evaluate_model.py", "--model", model, "--split", "PublicTest", "--fer", fer,
         "--no-in-frame", "--limit", "300", "--speed-runs", "5", "--json", out],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_bundled_model_against_a_guessing_one_on_real_faces(tmp_path):
    """Real FER-2013 faces, the real benchmark script twice, then the comparison: the bundled model beats a
    random linear model by far more than chance, on every row; the outcomes reproduce the reported figures."""
    fer = shared_path("datasets", "fer2013")
    bundled = _evaluate(REPO / "models" / "model.onnx", tmp_path / "bundled.json", fer)
    guessing = _evaluate(make_member(tmp_path / "guess", seed=3) / "model.onnx", tmp_path / "guess.json", fer)
    for name, condition in bundled["robustness"]["conditions"].items():
        marks = condition["outcomes"]
        assert marks.count("1") / (len(marks) - marks.count("-")) == pytest.approx(condition["accuracy"]), (
            name
        )
    assert bundled["outcomes"]["fer2013"].count("1") / 300 == pytest.approx(bundled["accuracy"])

    result = subprocess.run(
        [sys.executable, SCRIPTS / "compare_models.py", tmp_path / "guess.json", tmp_path / "bundled.json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line.split("  ")[0]: line for line in result.stdout.splitlines()[2:]}
    assert set(lines) >= {"FER-2013 labels", "FER+ majority", "jpeg_q25", "dim_x0.25", "robustness mean"}
    assert all(line.endswith(" *") for line in lines.values()), result.stdout
    mean = guessing["robustness"]["mean_accuracy"], bundled["robustness"]["mean_accuracy"]
    assert f"{mean[0]:7.2%} {mean[1]:7.2%}" in lines["robustness mean"]

    refused = subprocess.run(
        [sys.executable, SCRIPTS / "compare_models.py", tmp_path / "bundled.json", tmp_path / "missing.json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1 and "missing.json" in refused.stderr and "Traceback" not in refused.stderr

    # Another seed draws other scenes and noise: its outcomes do not line up face by face, so it is refused.
    assert bundled["seed"] == 0 and bundled["limit"] == 300
    (tmp_path / "reseeded.json").write_text(json.dumps({**guessing, "seed": 1}))
    refused = subprocess.run(
        [
            sys.executable,
            SCRIPTS / "compare_models.py",
            tmp_path / "bundled.json",
            tmp_path / "reseeded.json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1 and "different seed (0 and 1)" in refused.stderr, refused.stderr
