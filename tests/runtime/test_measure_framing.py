"""scripts/measure_framing.py writes a plausible FER-2013 framing into a model card, keeping its other keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from emotion_batch.vision.classification import CropGeometry, load_model_card

from .environment import REPO, shared_path


def test_measure_framing_writes_the_crop(yunet_path: Path, tiny_model: Path, tmp_path: Path) -> None:
    shared_path("datasets", "fer2013", "test")
    model = tmp_path / "model.onnx"
    model.write_bytes(tiny_model.read_bytes())
    card_before = json.loads(tiny_model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps(card_before))

    result = subprocess.run(
        [sys.executable, REPO / "scripts" / "measure_framing.py", "--split", "test", "--samples", "120",
         "--detector-model", yunet_path, "--card", model.with_suffix(".json")],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "YuNet found a centred face in" in result.stdout and "calibrated: scale" in result.stdout

    card = json.loads(model.with_suffix(".json").read_text())
    assert {k: v for k, v in card.items() if k != "crop"} == card_before
    crop = load_model_card(model).crop
    assert isinstance(crop, CropGeometry) and load_model_card(model).crop_from_card
    assert 0.8 < crop.scale < 1.1, "FER-2013 crops are tight: about one detector box"
    assert abs(crop.offset_x) < 0.08 and abs(crop.offset_y) < 0.1
