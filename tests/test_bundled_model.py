"""The model that ships in models/: its card, its behaviour on real faces, and that installs carry it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from emotion_batch.schema import EMOTIONS
from emotion_batch.vision.classification import Classifier, bundled_model_path, load_model_card

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    path = bundled_model_path()
    if not path.is_file():
        pytest.skip(f"bundled model missing: {path}")
    return Classifier(load_model_card())


def test_card_describes_the_shipped_model():
    card = json.loads((REPO / "models" / "model.json").read_text())
    assert card["labels"] == list(EMOTIONS)
    assert card["input"]["channels"] == 1 and card["input"]["range"] == [0, 255]
    assert card["input"]["dtype"] == "float32"
    assert {"scale", "offset_x", "offset_y"} <= set(card["crop"])
    assert card["metrics"]["val"]["split"].endswith("[PublicTest_*]")
    assert card["metrics"]["test"]["split"].endswith("[PrivateTest_*]")
    assert card["export"]["max_abs_diff"] <= 1e-4
    assert card["training"]["command"][0] == "emotion-train"
    assert len(card["training"]["data"]["train"]["sha256"]) == 64
    assert (REPO / "models" / "model.onnx").stat().st_size <= 15_000_000


def test_the_shipped_graph_is_float_and_its_choice_is_recorded():
    """Issue 13's rule (models/README.md): a float graph, chosen on PublicTest, its figures kept in the card.

    Int8 kernels give other numbers, and much slower runs, on CPUs without VNNI; float arithmetic gives the
    same answers on every x86 CPU.
    """
    import onnx

    card = json.loads((REPO / "models" / "model.json").read_text())
    graph = onnx.load(str(REPO / "models" / "model.onnx")).graph
    integer_ops = {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
    }
    assert not [node.name for node in graph.node if node.op_type in integer_ops]
    assert {init.data_type for init in graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    assert "quantization" not in card and "smoothing" not in card
    assert card["training"]["labels"]["votes"].endswith("ferplus.csv")  # trained on the FER+ rater votes
    assert card["selection"]["chosen_on"].startswith("FER-2013 PublicTest")
    public, private = card["generalisation"]["PublicTest"], card["generalisation"]["PrivateTest"]
    assert public["split"].startswith("FER-2013 PublicTest") and private["split"].startswith(
        "FER-2013 PrivateTest"
    )
    assert private["accuracy"] == pytest.approx(card["metrics"]["test"]["accuracy"], abs=1e-9)
    for figures in (public, private):
        assert (
            len(figures["robustness"]["conditions"]) == 10 and figures["ferplus"]["majority_accuracy"] > 0.7
        )
    assert public["model_mb"] <= 15
    if public["ms_per_face_batch1_1thread_median"] > 1.5:  # rule 1's addition: the graph, or the hour?
        timing = card["selection"]["alternating_timing_ms"]
        assert timing["same_graph_as_previous"]
        assert np.median(timing["this_model"]) <= 1.05 * np.median(timing["previous_model"])
    for link in card["training"]["lineage"]:  # every run it was fine-tuned from is named with its command
        assert link["command"][0] == "emotion-train"


def test_astronaut_is_happy(classifier):
    """skimage's astronaut smiles; cropped the way the runtime crops, the model must say so."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the astronaut photo")
    image = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    from emotion_batch.vision.detection import Detection

    face = Detection(x=170.0, y=40.0, w=100.0, h=120.0, score=1.0)  # the face's box in the 512x512 photo
    probs = classifier.classify(image, [face])[0]
    assert EMOTIONS[int(np.argmax(probs))] == "happy"
    assert probs.max() > 0.5


def test_fer_public_test_sample_scores_well_above_chance(classifier):
    fer = SHARED / "datasets" / "fer2013" / "test"
    if not fer.is_dir():
        pytest.skip(f"FER-2013 not found at {fer} (set EMOTION_BATCH_SHARED)")
    images, truth = [], []
    for index, label in enumerate(EMOTIONS):
        for path in sorted((fer / label).glob("PublicTest_*"))[:40]:
            grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            images.append(cv2.resize(grey, (classifier.card.width, classifier.card.height))[..., None])
            truth.append(index)
    probs = classifier.predict(np.stack(images).astype(np.float32))
    accuracy = float(np.mean(probs.argmax(axis=1) == np.asarray(truth)))
    assert accuracy > 0.55, (
        accuracy
    )  # chance is 1/7; a balanced sample is harder than the real mix (0.66 measured)


@pytest.mark.slow
def test_wheel_ships_the_model(tmp_path):
    """A non-editable install gets the model from package data, not from the source tree."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("emotion_batch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "emotion_batch/bundled/model.onnx" in names
    assert "emotion_batch/bundled/model.json" in names
    assert any(name.startswith("emotion_train/") for name in names)


#: Centres (x, y in the 640x360 frame) of the four laughing audience members in the Hamilton clip's last
#: shot (7.5-9 s), read off `--annotate` frames: three women and the man in the middle, all laughing.
HAMILTON_LAUGHING = ((81, 95), (199, 130), (355, 92), (420, 132))


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 13: the bundled model reads 6 of the 28 samples of these laughing "
    "faces as sad and only 29% as happy; the check flips to a pass (and strict xfail fails) once a "
    "model reads them right",
)
def test_laughing_faces_in_the_hamilton_clip_are_not_sad():
    """The bundled model on real video through the whole pipeline: laughter must not read as sadness."""
    import emotion_batch

    video = SHARED / "media" / "videos" / "facerec_short_hamilton_clip.mp4"
    yunet = SHARED / "detectors" / "face_detection_yunet_2023mar.onnx"
    if not video.is_file() or not yunet.is_file():
        pytest.skip(f"shared media or YuNet missing under {SHARED}")
    rows = emotion_batch.analyze(video, detector_model=yunet, progress=False, fps=4.0, start=7.5)
    faces = rows[rows["n_faces"] > 0]
    cx, cy = faces["x"] + faces["w"] / 2, faces["y"] + faces["h"] / 2
    near = np.zeros(len(faces), dtype=bool)
    for x, y in HAMILTON_LAUGHING:
        near |= np.hypot(cx - x, cy - y).to_numpy() < 25
    laughing = faces[near]
    assert len(laughing) >= 12  # the four faces over at least three sampled frames
    assert (laughing["emotion"] != "sad").all(), laughing[["timestamp_s", "x", "y", "emotion", "confidence"]]
    assert (laughing["emotion"] == "happy").mean() >= 0.5


def _public_test_card() -> dict:
    fer = SHARED / "datasets" / "fer2013"
    if not (fer / "test").is_dir() or not (fer / "ferplus.csv").is_file():
        pytest.skip(f"FER-2013 or its FER+ votes missing under {fer}")
    return json.loads((REPO / "models" / "model.json").read_text())["generalisation"]["PublicTest"]


@pytest.mark.slow
def test_the_evaluation_script_reproduces_the_cards_public_test_figures(tmp_path):
    """Anyone can rerun the benchmark: the card's PublicTest figures come back from scripts/evaluate_model.py
    (all but the in-frame conditions, which need the detector and minutes, and the speed)."""
    card = _public_test_card()
    out = tmp_path / "public.json"
    result = subprocess.run(
        [sys.executable, REPO / "scripts" / "evaluate_model.py", "--split", "PublicTest", "--no-in-frame",
         "--speed-runs", "20", "--json", out],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["accuracy"] == pytest.approx(card["accuracy"], abs=1e-9)
    for key in ("majority_accuracy", "nll_vs_raters", "ece_majority"):
        assert got["ferplus"][key] == pytest.approx(card["ferplus"][key], abs=1e-6), key
    conditions = {name: c["accuracy"] for name, c in got["robustness"]["conditions"].items()}
    assert not any(name.startswith("in_frame") for name in conditions)
    for name, accuracy in conditions.items():
        assert accuracy == pytest.approx(card["robustness"]["conditions"][name], abs=1e-9), name
    assert 0 < got["ece_labels"] < card["ferplus"]["ece_majority"]  # better calibrated to FER-2013's labels
    lighting = got["robustness"]["lighting"]  # beside the mean, not in it
    assert set(lighting) == {"dim_x0.25", "faded_x0.4+120"}
    assert all(
        c["images"] == got["ferplus"]["images"] + got["ferplus"]["left_out"] for c in lighting.values()
    )
    for name, accuracy in card["robustness"].get("lighting", {}).items():  # cards from session 10 on
        assert lighting[name]["accuracy"] == pytest.approx(accuracy, abs=1e-9), name
    assert f"FER-2013 accuracy {card['accuracy']:.4f}" in result.stdout


@pytest.mark.slow
def test_temperature_scan_keeps_the_cards_figures_at_one_and_sharpens_below(tmp_path):
    card = _public_test_card()
    result = subprocess.run(
        [sys.executable, REPO / "scripts" / "temperature_scan.py", "--temperatures", "0.7", "1", "1.4"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        float(line.split()[0]): [float(v) for v in line.split()[1:]]
        for line in result.stdout.splitlines()[1:]
        if line.strip()
    }
    assert sorted(rows) == [0.7, 1.0, 1.4]
    nll_raters, ece_majority = rows[1.0][:2]
    assert nll_raters == pytest.approx(card["ferplus"]["nll_vs_raters"], abs=1e-4)
    assert ece_majority == pytest.approx(card["ferplus"]["ece_majority"], abs=1e-4)
    confidence = {t: row[-1] for t, row in rows.items()}
    assert confidence[0.7] > confidence[1.0] > confidence[1.4]
