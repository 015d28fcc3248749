"""scripts/bundle_model.py: a finished run becomes the shipped model, and nothing of the old one lingers."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np

from emotion_batch.vision.classification import Classifier, load_model_card

from .test_ensemble import make_member

REPO = Path(__file__).resolve().parents[2]


def benchmark_json(path: Path, split: str) -> Path:
    """The parts of an evaluate_model.py --json result that the card keeps, plus some it leaves out."""
    path.write_text(json.dumps({
        "split": f"FER-2013 {split} (3589 images)", "cpu": "AMD EPYC (with VNNI)", "accuracy": 0.68,
        "macro_f1": 0.66, "confusion_matrix": [[1]], "per_class": {"angry": {"recall": 0.5}},
        "ferplus": {"majority_accuracy": 0.77, "images": 3325},
        "ms_per_face_batch1_1thread_median": 1.1, "model_mb": 8.9,
        "robustness": {"mean_accuracy": 0.65, "conditions": {
            "jpeg_q25": {"images": 3589, "accuracy": 0.66},
            "in_frame_60px": {"images": 600, "accuracy": 0.64, "detection_rate": 0.76},
        }},
    }))  # fmt: skip
    return path


def test_a_run_replaces_the_bundled_model_card_and_plots(tmp_path: Path) -> None:
    run = make_member(tmp_path / "run", seed=1, crop=None, smoothing=None)
    (run / "plots").mkdir()
    (run / "plots" / "confusion_val.png").write_bytes(b"new plot")
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.onnx").write_bytes(b"the old model")
    (models / "model.json").write_text(json.dumps({"crop": {"scale": 0.95, "offset_x": 0.0, "offset_y": 0.02},
                                                   "smoothing": {"sigma": 0.7}}))
    (models / "training_curves_2.png").write_bytes(b"a plot of the old model's second member")
    (models / "confusion_val.png").write_bytes(b"old plot")

    result = subprocess.run(
        [sys.executable, REPO / "scripts" / "bundle_model.py", run, "--models", models,
         "--benchmark", benchmark_json(tmp_path / "public.json", "PublicTest"),
         "--benchmark", benchmark_json(tmp_path / "private.json", "PrivateTest")],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    assert (models / "model.onnx").read_bytes() == (run / "model.onnx").read_bytes()
    assert sorted(p.name for p in models.glob("*.png")) == ["confusion_val.png"]
    assert (models / "confusion_val.png").read_bytes() == b"new plot"
    for name in ("model.onnx", "model.json", "confusion_val.png"):  # shipped files: readable by everyone
        assert (models / name).stat().st_mode & stat.S_IROTH
    assert not [p for p in models.iterdir() if p.name.startswith(".")], "no temporary file stays behind"

    card = json.loads((models / "model.json").read_text())
    assert card["crop"] == {"scale": 0.95, "offset_x": 0.0, "offset_y": 0.02}, "the measured framing is kept"
    assert "smoothing" not in card, "the old model's sections do not carry over"
    assert set(card["generalisation"]) == {"PublicTest", "PrivateTest"}
    public = card["generalisation"]["PublicTest"]
    assert public["ferplus"]["majority_accuracy"] == 0.77 and "confusion_matrix" not in public
    assert public["robustness"] == {"mean_accuracy": 0.65,
                                    "conditions": {"jpeg_q25": 0.66, "in_frame_60px": 0.64},
                                    "detection_rate": {"in_frame_60px": 0.76}}
    loaded = load_model_card(models / "model.onnx")
    assert loaded.crop_from_card and loaded.crop.scale == 0.95
    assert Classifier(loaded).predict(np.zeros((2, 48, 48, 1), np.float32)).shape == (2, 7)
