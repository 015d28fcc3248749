"""Distillation: a real run trained towards an exported teacher's probabilities, and the checks around it."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from emotion_batch.digest import sha256_file
from emotion_train.augment import AugmentConfig
from emotion_train.cli import main
from emotion_train.data import DatasetError, load_folder
from emotion_train.distill import (
    CACHE_NAME,
    ONLINE_RECORD_NAME,
    Teacher,
    blend_targets,
    cached_teacher_probabilities,
    pin_teacher,
    run_teacher,
)
from emotion_train.train import AugmentedBatches, one_hot

from .conftest import CLASSES, SIZE, make_dataset, run_env, train_command


@pytest.fixture(scope="module")
def test_images(datasets):
    return load_folder(datasets["test"], SIZE)


def train_student(datasets, teacher, out, *options: str) -> str:
    """A real 2-epoch run distilled from ``teacher``; returns its log (stderr)."""
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(datasets["base"] / "cache"))
    result = subprocess.run(
        train_command(
            datasets["train"],
            out,
            "--val",
            str(datasets["test"]),
            "--epochs",
            "2",
            "--teacher",
            str(teacher),
            *options,
        ),
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stderr


def test_distilled_run_trains_on_cached_teacher_targets(datasets, trained_run, tmp_path):
    teacher = trained_run / "model.onnx"
    out = tmp_path / "student"
    assert "agrees with the labels on" in train_student(datasets, teacher, out, "--teacher-weight", "0.7")

    with np.load(out / "checkpoints" / CACHE_NAME) as saved:
        probs, sha = saved["probs"], str(saved["teacher_sha256"])
    train = load_folder(datasets["train"], SIZE)
    assert probs.shape == (len(train), len(CLASSES))
    np.testing.assert_allclose(
        probs, run_teacher(teacher, train.images, train.labels), atol=1e-6
    )  # row-aligned
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(probs.argmax(axis=1) == train.targets) > 0.75  # the teacher has learnt the patterns
    assert sha == sha256_file(teacher)

    card = json.loads((out / "model.json").read_text())
    assert card["training"]["teacher"] == {
        "path": str(teacher.resolve()),
        "weight": 0.7,
        "sha256": sha,
        "online": False,
    }
    assert card["training"]["config"]["teacher_weight"] == 0.7


def test_online_distilled_run_runs_the_teacher_during_training(datasets, trained_run, tmp_path):
    teacher = trained_run / "model.onnx"
    out = tmp_path / "student"
    log = train_student(datasets, teacher, out, "--teacher-weight", "0.6", "--online-teacher")
    assert "runs on every augmented batch (online); targets are 60% teacher" in log
    assert not (out / "checkpoints" / CACHE_NAME).exists()  # nothing precomputed
    record = json.loads((out / "checkpoints" / ONLINE_RECORD_NAME).read_text())
    assert record["teacher_sha256"] == sha256_file(teacher)
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["teacher"]["online"] is True
    assert card["training"]["config"]["online_teacher"] is True


def test_online_teacher_targets_are_its_answers_on_the_augmented_batch(trained_run, test_images):
    teacher = Teacher(trained_run / "model.onnx", test_images.labels)
    labels = one_hot(test_images.targets, len(CLASSES))
    weights = np.ones(len(labels), np.float32)
    augment = AugmentConfig.from_dict({"strength": 1.0})
    batches = AugmentedBatches(
        test_images.images, labels, weights, 16, augment, seed=3, teacher=teacher, teacher_weight=0.6
    )
    batches.start_epoch(0)
    images, targets, _ = batches[0]
    rows = batches.order[:16]
    augmented = images[..., 0].astype(np.uint8)  # the batch holds the augmented uint8 values as float32
    np.testing.assert_allclose(targets, 0.4 * labels[rows] + 0.6 * teacher(augmented), atol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    clean = blend_targets(labels[rows], teacher(test_images.images[rows]), 0.6)
    assert np.abs(targets - clean).max() > 1e-3  # the teacher saw the moved faces, not the clean ones
    _, again, _ = batches[0]
    np.testing.assert_array_equal(
        targets, again
    )  # same (seed, epoch, batch): same targets, so resume is exact


def test_online_teacher_is_pinned_for_resume(trained_run, tmp_path):
    teacher, record = trained_run / "model.onnx", tmp_path / ONLINE_RECORD_NAME
    pin_teacher(teacher, "a" * 64, record)
    pin_teacher(teacher, "a" * 64, record)  # the same file: fine
    with pytest.raises(DatasetError, match="the teacher file changed since this run started"):
        pin_teacher(teacher, "b" * 64, record)


def test_teacher_probabilities_use_the_mirror_and_resize(trained_run, test_images):
    teacher = trained_run / "model.onnx"
    probs = run_teacher(teacher, test_images.images, test_images.labels)
    assert np.mean(probs.argmax(axis=1) == test_images.targets) > 0.75
    mirrored = run_teacher(teacher, test_images.images[:, :, ::-1], test_images.labels)
    np.testing.assert_allclose(probs, mirrored, atol=1e-5)  # flip-averaged, so mirror-invariant

    larger = np.stack([np.kron(image, np.ones((2, 2), np.uint8)) for image in test_images.images])  # 80 px
    resized = run_teacher(teacher, larger, test_images.labels)
    assert np.mean(resized.argmax(axis=1) == probs.argmax(axis=1)) > 0.9


def test_teacher_with_other_classes_is_refused(trained_run, test_images):
    with pytest.raises(DatasetError, match="model.onnx: the teacher's labels"):
        run_teacher(trained_run / "model.onnx", test_images.images, ["ring", "bars_v", "bars_h"])


def test_teacher_without_card_must_match_the_class_count(trained_run, test_images, tmp_path):
    bare = tmp_path / "teacher.onnx"
    shutil.copy(trained_run / "model.onnx", bare)  # no model.json beside it
    with pytest.raises(DatasetError, match="teacher.onnx: the teacher predicts 3 classes, the data has 4"):
        run_teacher(bare, test_images.images, [*CLASSES, "extra"])


def test_changed_teacher_is_refused_on_resume(trained_run, test_images, tmp_path):
    teacher = trained_run / "model.onnx"
    cache = tmp_path / CACHE_NAME
    first = cached_teacher_probabilities(
        teacher, "a" * 64, test_images.images, "data", test_images.labels, cache
    )
    again = cached_teacher_probabilities(
        teacher, "a" * 64, test_images.images, "data", test_images.labels, cache
    )
    np.testing.assert_array_equal(first, again)
    with pytest.raises(DatasetError, match="the teacher file changed since this run started"):
        cached_teacher_probabilities(teacher, "b" * 64, test_images.images, "data", test_images.labels, cache)


def test_not_an_onnx_teacher_names_the_file(test_images, tmp_path):
    fake = tmp_path / "teacher.onnx"
    fake.write_text("not a model")
    with pytest.raises(DatasetError, match="teacher.onnx: not a loadable ONNX model"):
        run_teacher(fake, test_images.images, test_images.labels)


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        (0.5, [0.6, 0.3, 0.1]),
        (1.0, [0.2, 0.6, 0.2]),
        (0.25, [0.8, 0.15, 0.05]),
    ],
)
def test_blend_targets(weight, expected):
    one_hot = np.array([[1.0, 0.0, 0.0]], np.float32)
    teacher = np.array([[0.2, 0.6, 0.2]], np.float32)
    blended = blend_targets(one_hot, teacher, weight)
    np.testing.assert_allclose(blended[0], expected, atol=1e-6)
    assert blended.dtype == np.float32


@pytest.mark.parametrize("option", [["--teacher-weight", "0.3"], ["--online-teacher"]])
def test_teacher_options_need_a_teacher(tmp_path, option):
    data = make_dataset(tmp_path / "data", per_class=2, seed=0)
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "run"), *option])
    assert result.exit_code == 2
    assert option[0] in result.output and "only applies with --teacher" in result.output
    assert not (tmp_path / "run").exists()
