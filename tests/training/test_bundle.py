"""scripts/bundle_model.py: a finished run becomes the shipped model, and nothing of the old one lingers."""

from __future__ import annotations

import hashlib
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
        }, "lighting": {"dim_x0.25": {"images": 3589, "accuracy": 0.61, "ferplus_accuracy": 0.7}}},
    }))  # fmt: skip
    return path


def test_a_run_replaces_the_bundled_model_card_and_plots(tmp_path: Path) -> None:
    run = make_member(tmp_path / "run", seed=1, crop=None, smoothing=None)
    (run / "plots").mkdir()
    (run / "plots" / "confusion_val.png").write_bytes(b"new plot")
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.onnx").write_bytes(b"the old model")
    (models / "model.json").write_text(
        json.dumps({"crop": {"scale": 0.95, "offset_x": 0.0, "offset_y": 0.02}, "smoothing": {"sigma": 0.7}})
    )
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
    assert public["robustness"] == {
        "mean_accuracy": 0.65,
        "conditions": {"jpeg_q25": 0.66, "in_frame_60px": 0.64},
        "detection_rate": {"in_frame_60px": 0.76},
        "lighting": {"dim_x0.25": 0.61},
    }
    loaded = load_model_card(models / "model.onnx")
    assert loaded.crop_from_card and loaded.crop.scale == 0.95
    assert Classifier(loaded).predict(np.zeros((2, 48, 48, 1), np.float32)).shape == (2, 7)


def _bundle_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bundle_model", REPO / "scripts" / "bundle_model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fine_tuned_run(folder: Path, init_from: Path | None, best_epoch: int) -> Path:
    """An exported run whose config and card say it started from ``init_from``'s best checkpoint."""
    folder = make_member(folder, seed=1, crop=None, smoothing=None)
    command = ["emotion-train", "data", "--out", str(folder)]
    if init_from:
        command += ["--init-from", str(init_from / "checkpoints" / "best.keras")]
    (folder / "config.json").write_text(
        json.dumps({"train": {"init_from": command[-1] if init_from else None}, "command": command})
    )
    card = json.loads((folder / "model.json").read_text())
    card["training"] = {"command": command, "best_epoch": best_epoch, "epochs_run": 10}
    (folder / "model.json").write_text(json.dumps(card))
    return folder


def test_a_fine_tuned_run_carries_the_commands_of_the_runs_it_started_from(tmp_path: Path) -> None:
    bundle_model = _bundle_module()
    first = _fine_tuned_run(tmp_path / "first", None, 7)
    second = _fine_tuned_run(tmp_path / "second", first, 5)
    third = _fine_tuned_run(tmp_path / "third", second, 3)
    chain = bundle_model.lineage(third)
    assert [link["run"] for link in chain] == [str(second), str(first)]
    assert (
        chain[0]["command"][-1] == str(first / "checkpoints" / "best.keras") and chain[1]["best_epoch"] == 7
    )

    (first / "config.json").unlink()  # an ancestor that is gone is named, not guessed
    assert bundle_model.lineage(third)[-1] == {"run": str(first), "missing": True}
    models = tmp_path / "models"
    card = bundle_model.bundle(third, models)
    assert [link["run"] for link in card["training"]["lineage"]] == [str(second), str(first)]
    assert (
        json.loads((models / "model.json").read_text())["training"]["lineage"] == card["training"]["lineage"]
    )


def test_a_soup_carries_each_ingredients_chain_and_curves(tmp_path: Path) -> None:
    bundle_model = _bundle_module()
    base = _fine_tuned_run(tmp_path / "base", None, 7)
    tunes = [_fine_tuned_run(tmp_path / name, base, 4) for name in ("a", "b")]
    for run in tunes:
        (run / "plots").mkdir()
        (run / "plots" / "training_curves.png").write_bytes(f"curves of {run.name}".encode())
    soup = make_member(tmp_path / "soup", seed=2, crop=None, smoothing=None)  # no config.json: not trained
    card = json.loads((soup / "model.json").read_text())
    card["ingredients"] = [{"run_dir": str(run), "weight": 0.5} for run in tunes]
    (soup / "model.json").write_text(json.dumps(card))

    models = tmp_path / "models"
    bundled = bundle_model.bundle(soup, models)
    assert [i["lineage"][0]["run"] for i in bundled["ingredients"]] == [str(base), str(base)]
    assert (models / "training_curves_1.png").read_bytes() == b"curves of a"
    assert (models / "training_curves_2.png").read_bytes() == b"curves of b"


def test_a_run_started_from_an_exported_model_carries_that_models_card(tmp_path: Path) -> None:
    """`--init-from models/model.onnx`: the lineage names the graph by digest, with its card's command and chain."""
    bundle_model = _bundle_module()
    first = _fine_tuned_run(tmp_path / "first", None, 7)
    shipped = _fine_tuned_run(tmp_path / "shipped", first, 5)
    card = json.loads((shipped / "model.json").read_text())
    card["training"]["lineage"] = bundle_model.lineage(shipped)
    (shipped / "model.json").write_text(json.dumps(card))
    tuned = _fine_tuned_run(tmp_path / "tuned", None, 3)
    config = json.loads((tuned / "config.json").read_text())
    config["train"]["init_from"] = str(shipped / "model.onnx")
    (tuned / "config.json").write_text(json.dumps(config))

    chain = bundle_model.lineage(tuned)
    assert len(chain) == 1 and chain[0]["model"] == str(shipped / "model.onnx")
    assert chain[0]["sha256"] == hashlib.sha256((shipped / "model.onnx").read_bytes()).hexdigest()
    assert chain[0]["best_epoch"] == 5 and [link["run"] for link in chain[0]["lineage"]] == [str(first)]

    (shipped / "model.json").unlink()  # a graph without its card is named, not guessed
    assert bundle_model.lineage(tuned) == [{"model": str(shipped / "model.onnx"), "missing": True}]
