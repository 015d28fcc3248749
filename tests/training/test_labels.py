"""Multi-rater soft labels (--labels votes.csv): matching, majority, blends, refusals, and a real run."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest

from emotion_train.data import DatasetError
from emotion_train.labels import read_votes, soft_targets

from .conftest import CLASSES, run_env, train_command

LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
FERPLUS_HEADER = (
    "path,usage,fer2013_label,ferplus_images,"
    "neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
)


def write_csv(path, header, rows):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_ferplus_columns_map_to_class_names_and_prefixed_paths_match(tmp_path):
    csv = write_csv(
        tmp_path / "votes.csv",
        FERPLUS_HEADER,
        [
            "train/happy/a.png,Training,happy,fer1.png,2,8,0,0,0,0,0,0,0,0",
            "train/angry/b.png,Training,angry,fer2.png,0,0,0,0,3,0,0,5,2,0",  # mostly contempt/unknown
            "train/sad/not-in-dataset.png,Training,sad,fer3.png,0,0,0,10,0,0,0,0,0,0",
        ],
    )
    files = ["happy/a.png", "angry/b.png", "sad/c.png"]
    votes = read_votes(csv, files, LABELS)
    assert votes.matched == 2
    np.testing.assert_array_equal(votes.counts[0], [0, 0, 0, 8, 2, 0, 0])
    assert votes.other[1] == 7
    np.testing.assert_array_equal(votes.has_votes, [True, True, False])
    np.testing.assert_array_equal(votes.majority(), [3, -1, -1])
    np.testing.assert_array_equal(votes.keep_mask(), [True, False, True])


def test_ties_have_no_majority(tmp_path):
    csv = write_csv(
        tmp_path / "v.csv", "path,angry,disgust,fear,happy,neutral,sad,surprise", ["x.png,5,0,0,5,0,0,0"]
    )
    assert read_votes(csv, ["x.png"], LABELS).majority().tolist() == [-1]


@pytest.mark.parametrize(
    "label_weight, expected",
    [
        (0.0, [0.0, 0.0, 0.0, 0.8, 0.2, 0.0, 0.0]),
        (0.5, [0.0, 0.0, 0.0, 0.4, 0.6, 0.0, 0.0]),
        (1.0, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
    ],
)
def test_soft_targets_blend_votes_with_the_folder_label(tmp_path, label_weight, expected):
    csv = write_csv(
        tmp_path / "v.csv",
        "path,anger,disgust,fear,happiness,neutral,sadness,surprise",
        ["neutral/a.png,0,0,0,8,2,0,0"],
    )
    votes = read_votes(csv, ["neutral/a.png", "sad/b.png"], LABELS)
    targets = soft_targets(votes, np.array([4, 5]), 7, label_weight)
    np.testing.assert_allclose(targets[0], expected, atol=1e-6)
    np.testing.assert_array_equal(targets[1], np.eye(7)[5])  # no votes: the folder label


def test_a_class_without_a_vote_column_is_refused(tmp_path):
    csv = write_csv(tmp_path / "v.csv", "path,angry,happy", ["a.png,1,2"])
    with pytest.raises(DatasetError, match="no vote column for class"):
        read_votes(csv, ["a.png"], LABELS)


def test_a_votes_file_matching_no_image_is_refused(tmp_path):
    csv = write_csv(tmp_path / "v.csv", "path," + ",".join(LABELS), ["elsewhere.png,1,0,0,0,0,0,0"])
    with pytest.raises(DatasetError, match="no row's path matches"):
        read_votes(csv, ["happy/a.png"], LABELS)


def test_non_numeric_votes_name_the_line(tmp_path):
    csv = write_csv(tmp_path / "v.csv", "path," + ",".join(LABELS), ["a.png,1,x,0,0,0,0,0"])
    with pytest.raises(DatasetError, match=r"v.csv:2: vote counts must be numbers"):
        read_votes(csv, ["a.png"], LABELS)


@pytest.mark.slow
def test_real_training_on_rater_votes(datasets, tmp_path):
    """Votes that move every ring image to bars_v: a model trained on the votes alone learns the raters."""
    rows = [
        f"{c}/img_{i:03d}.png,"
        + ",".join("10" if (k == 1 if c == "ring" else k == j) else "0" for k in range(3))
        for j, c in enumerate(CLASSES)
        for i in range(80)
    ]
    csv = write_csv(tmp_path / "votes.csv", "path," + ",".join(CLASSES), rows)
    out = tmp_path / "run"
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(tmp_path / "cache"))
    command = train_command(
        datasets["train"], out, "--epochs", "4", "--labels", str(csv), "--label-weight", "0"
    )
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["labels"]["label_weight"] == 0.0
    assert card["training"]["labels"]["votes"] == str(csv)
    assert re.search(r"votes for (\d+) of \1 training images", (out / "train.log").read_text())


def test_label_weight_needs_labels(datasets, tmp_path):
    command = train_command(datasets["train"], tmp_path / "run", "--label-weight", "0.5")
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=run_env(), timeout=300)
    assert result.returncode == 2 and "only applies with --labels" in result.stderr
