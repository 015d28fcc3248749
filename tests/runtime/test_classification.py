"""The model contract: card loading and validation, crop geometry, batching and label order."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from emotion_batch.schema import EMOTIONS
from emotion_batch.vision.classification import (
    Classifier,
    CropGeometry,
    FrameBatcher,
    ModelUnavailable,
    card_path_for,
    crop_face,
    load_model_card,
)
from emotion_batch.vision.detection import Detection

from .environment import SHUFFLED_LABELS


def copy_model(tiny_model: Path, folder: Path, **card_changes) -> Path:
    """The tiny model in `folder` with its card edited (a value of None deletes the key)."""
    target = folder / "m.onnx"
    shutil.copy(tiny_model, target)
    card = json.loads(card_path_for(tiny_model).read_text())
    for key, value in card_changes.items():
        if value is None:
            card.pop(key, None)
        else:
            card[key] = value
    card_path_for(target).write_text(json.dumps(card))
    return target


def test_card_beside_model_with_same_stem() -> None:
    assert card_path_for("run/model.onnx") == Path("run/model.json")
    assert card_path_for(Path("/a/b/best.onnx")) == Path("/a/b/best.json")


def test_card_is_read(tiny_model: Path) -> None:
    card = load_model_card(tiny_model)
    assert card.labels == tuple(SHUFFLED_LABELS)
    assert (card.height, card.width) == (48, 48)
    assert card.crop == CropGeometry() and not card.crop_from_card
    assert len(card.sha256) == 64 and card.name == str(tiny_model)


def test_measured_crop_comes_from_the_card(tiny_model: Path, tmp_path: Path) -> None:
    crop = {"scale": 0.93, "offset_x": -0.01, "offset_y": 0.05, "note": "provenance keys are ignored"}
    card = load_model_card(copy_model(tiny_model, tmp_path, crop=crop))
    assert card.crop == CropGeometry(0.93, -0.01, 0.05) and card.crop_from_card


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": ["happy", "sad"]}, "labels .* do not match the output schema"),
        ({"labels": None}, "labels .* do not match"),
        ({"input": {"height": 48}}, "lacks input.height/input.width"),
        ({"input": {"height": 48, "width": 48, "channels": 3}}, "only greyscale"),
        ({"crop": {"scale": "wide"}}, "invalid crop"),
    ],
)
def test_bad_cards_are_rejected_with_the_reason(tiny_model: Path, tmp_path: Path, changes, message) -> None:
    with pytest.raises(ModelUnavailable, match=message):
        load_model_card(copy_model(tiny_model, tmp_path, **changes))


def test_missing_files(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="model file not found"):
        load_model_card(tmp_path / "none.onnx")
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(tiny_model, lonely)
    with pytest.raises(ModelUnavailable, match="model card not found: .*lonely.json"):
        load_model_card(lonely)
    card_path_for(lonely).write_text("{not json")
    with pytest.raises(ModelUnavailable, match="cannot read model card"):
        load_model_card(lonely)


def test_not_an_onnx_file(tiny_model: Path, tmp_path: Path) -> None:
    broken = copy_model(tiny_model, tmp_path)
    broken.write_bytes(b"definitely not onnx")
    with pytest.raises(ModelUnavailable, match="cannot load model"):
        Classifier(load_model_card(broken))


# --- crop geometry ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("box", "crop", "expected_origin", "side"),
    [
        ((100, 50, 40, 60), CropGeometry(1.0, 0.0, 0.0), (90, 50), 60),  # square around the taller side
        ((100, 50, 40, 60), CropGeometry(1.5, 0.0, 0.0), (75, 35), 90),
        ((100, 50, 40, 60), CropGeometry(1.0, 0.25, -0.1), (100, 44), 60),  # offsets in box units
    ],
)
def test_crop_square_position_and_size(box, crop, expected_origin, side) -> None:
    ys, xs = np.mgrid[0:200, 0:300]
    coded = np.stack([ys, xs, np.zeros_like(xs)], axis=-1).astype(np.uint16)
    patch = crop_face(coded, Detection(*box, 0.9), crop)
    assert patch.shape[:2] == (side, side)
    assert (int(patch[0, 0, 0]), int(patch[0, 0, 1])) == (expected_origin[1], expected_origin[0])


def test_crop_leaving_the_frame_replicates_edges() -> None:
    ys, xs = np.mgrid[0:100, 0:100]
    image = (xs + ys).astype(np.uint8)
    patch = crop_face(image, Detection(-20, -10, 40, 40, 0.9), CropGeometry(1.0, 0.0, 0.0))
    assert patch.shape == (40, 40)
    assert (patch[:10, 20:] == patch[10, 20:]).all()  # rows above the frame repeat the top row
    assert (patch[10:, :20] == patch[10:, 20:21]).all()  # columns left of the frame repeat the left column
    assert patch[10, 20] == image[0, 0]


# --- inference -------------------------------------------------------------------------------------------------
def test_probabilities_are_mapped_to_schema_order_by_label_name(tiny_model: Path) -> None:
    classifier = Classifier(load_model_card(tiny_model))
    batch = np.stack([np.full((48, 48, 1), v, np.float32) for v in (0, 80, 255)])
    raw = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"]).run(
        None, {"input": batch}
    )[0]
    probs = classifier.predict(batch)
    assert probs.shape == (3, 7)
    for k, emotion in enumerate(EMOTIONS):
        np.testing.assert_allclose(probs[:, k], raw[:, SHUFFLED_LABELS.index(emotion)], rtol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_faces_are_batched_and_match_one_by_one(tiny_model: Path) -> None:
    classifier = Classifier(load_model_card(tiny_model))
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
    faces = [Detection(10 + 90 * i, 40 + 10 * i, 50 + 10 * i, 60 + 10 * i, 0.9) for i in range(5)]
    batch = classifier.prepare(image, faces)
    assert batch.shape == (5, 48, 48, 1) and batch.dtype == np.float32
    assert 0 <= batch.min() and batch.max() <= 255
    together = classifier.predict(batch)
    alone = np.concatenate([classifier.classify(image, [f]) for f in faces])
    np.testing.assert_allclose(together, alone, rtol=1e-6)
    assert classifier.classify(image, []).shape == (0, 7)


def test_frames_batched_together_give_each_frame_its_own_probabilities(tiny_model: Path) -> None:
    classifier = Classifier(load_model_card(tiny_model))
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(7)]
    counts = [3, 0, 1, 5, 0, 2, 4]
    faces = [[Detection(20 + 50 * i, 30 + 5 * i, 40, 48, 0.9) for i in range(n)] for n in counts]
    batcher: FrameBatcher[int] = FrameBatcher(classifier, max_faces=6, max_frames=3)
    done: list[tuple[int, np.ndarray]] = []
    sizes = []
    for k, (frame, found) in enumerate(zip(frames, faces)):
        ready = batcher.add(k, frame, found)
        sizes.append(len(ready))
        done += ready
    done += batcher.flush()
    assert sizes == [0, 0, 3, 0, 0, 3, 0]  # at the third frame, then at 6 faces
    assert [k for k, _ in done] == list(range(7))
    for (_, probs), frame, found in zip(done, frames, faces):
        np.testing.assert_array_equal(probs, classifier.classify(frame, found))
        assert probs.shape == (len(found), 7)
    assert batcher.flush() == []


def test_bundled_model_output_does_not_depend_on_the_batch(bundled_model: Path) -> None:
    """Why batching frames together changes no result: int8 or not, a face's probabilities are the same alone
    or among 15 others."""
    classifier = Classifier(load_model_card(bundled_model))
    crops = np.random.default_rng(5).uniform(0, 255, (16, 48, 48, 1)).astype(np.float32)
    together = classifier.predict(crops)
    np.testing.assert_array_equal(together, np.concatenate([classifier.predict(c[None]) for c in crops]))
    np.testing.assert_array_equal(together[3:8], classifier.predict(crops[3:8]))


def test_input_is_grey_crop_resized_with_area_interpolation(tiny_model: Path) -> None:
    classifier = Classifier(load_model_card(tiny_model))
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    face = Detection(50, 60, 120, 120, 0.9)
    expected = cv2.resize(
        cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[48:192, 38:182], (48, 48), interpolation=cv2.INTER_AREA
    )  # default crop: scale 1.2 -> 144 px square centred on the box
    np.testing.assert_array_equal(classifier.prepare(image, [face])[0, :, :, 0], expected.astype(np.float32))
