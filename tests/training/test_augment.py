"""The data-side augmenter: one composed warp, exact identity draws, seeded per (seed, epoch, batch)."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest

from emotion_train.augment import AugmentConfig, affine_matrix, augment_batch, augment_image, batch_rng

from .conftest import pattern_image, run_env, train_command

NOTHING = AugmentConfig(
    flip=0.0, affine=0.0, low_resolution=0.0, jpeg=0.0, noise=0.0, gamma=0.0, brightness=0.0, blur=0.0
)


@pytest.fixture
def face() -> np.ndarray:
    return pattern_image("ring", np.random.default_rng(3), size=48)


def test_identity_draw_returns_the_input_exactly(face):
    out = augment_image(face, np.random.default_rng(0), NOTHING)
    assert out.dtype == np.uint8 and np.array_equal(out, face)


def test_identity_matrix_warps_to_the_same_pixels(face):
    matrix = affine_matrix(48, angle_deg=0.0, scale=1.0, shear=0.0, tx=0.0, ty=0.0, flip=False)
    warped = cv2.warpAffine(face, matrix, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    assert np.array_equal(warped, face)


def test_flip_alone_mirrors_without_resampling(face):
    out = augment_image(face, np.random.default_rng(0), AugmentConfig(**{**NOTHING.to_dict(), "flip": 1.0}))
    assert np.array_equal(out, face[:, ::-1])


def test_flip_matrix_is_the_exact_mirror(face):
    matrix = affine_matrix(48, 0.0, 1.0, 0.0, 0.0, 0.0, flip=True)
    warped = cv2.warpAffine(face, matrix, (48, 48), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    assert np.array_equal(warped, face[:, ::-1])


def test_composed_matrix_matches_the_steps_one_after_another():
    """Rotation then translation as one matrix maps points as the two steps would."""
    matrix = affine_matrix(48, angle_deg=90.0, scale=1.0, shear=0.0, tx=5.0, ty=0.0, flip=False)
    centre = 23.5
    point = np.array([centre + 10.0, centre, 1.0])  # 10 px right of centre
    # 90 degrees in image coordinates (y down) turns "right of centre" into "below centre", then +5 in x.
    np.testing.assert_allclose(matrix @ point, [centre + 5.0, centre + 10.0], atol=1e-9)


def test_the_same_seed_epoch_and_batch_give_the_same_images(face):
    batch = np.stack([face] * 8)
    first = augment_batch(batch, batch_rng(7, 3, 11), AugmentConfig())
    again = augment_batch(batch, batch_rng(7, 3, 11), AugmentConfig())
    other_epoch = augment_batch(batch, batch_rng(7, 4, 11), AugmentConfig())
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other_epoch)


def test_some_faces_stay_untouched_by_the_warp(face):
    """With affine=0.8 about a fifth of the faces are not resampled at all (flip moves whole pixels)."""
    cfg = AugmentConfig(**{**NOTHING.to_dict(), "affine": 0.8, "flip": 0.0})
    rng = np.random.default_rng(0)
    untouched = np.mean([np.array_equal(augment_image(face, rng, cfg), face) for _ in range(400)])
    assert 0.13 < untouched < 0.27


@pytest.mark.parametrize(
    "step", ["low_resolution", "jpeg", "noise", "gamma", "brightness", "blur", "erasing"]
)
def test_each_degradation_changes_the_face_and_keeps_its_shape(face, step):
    cfg = AugmentConfig(**{**NOTHING.to_dict(), step: 1.0})
    out = augment_image(face, np.random.default_rng(1), cfg)
    assert out.shape == face.shape and out.dtype == np.uint8
    assert not np.array_equal(out, face)


def test_low_resolution_removes_fine_detail():
    """A face shrunk to 20-40 px and back has lost high frequencies: its Laplacian energy drops."""
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, size=(48, 48), dtype=np.uint8)
    cfg = AugmentConfig(**{**NOTHING.to_dict(), "low_resolution": 1.0, "low_resolution_px": (20, 24)})
    small = augment_image(sharp, rng, cfg)

    def energy(im: np.ndarray) -> float:
        return float(np.abs(cv2.Laplacian(im.astype(np.float32), cv2.CV_32F)).mean())

    assert energy(small) < 0.5 * energy(sharp)


@pytest.mark.slow
def test_real_training_with_augmentation_on(datasets, tmp_path):
    """A real subprocess run with the full augmentation: it trains, and the card records what it drew from."""
    out = tmp_path / "run"
    env = dict(run_env(), EMOTION_TRAIN_CACHE=str(tmp_path / "cache"))
    command = train_command(datasets["train"], out, "--epochs", "3", "--erasing", "0.2")
    command[command.index("--augment") + 1] = "1"
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["augmentation"]["strength"] == 1.0
    assert card["training"]["augmentation"]["erasing"] == 0.2
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["finished"] and state["epochs_done"] == 3
    assert card["metrics"]["val"]["accuracy"] > 1 / 3  # better than chance on three classes
