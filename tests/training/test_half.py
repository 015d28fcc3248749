"""`emotion-train half`: float16 storage of a real ONNX CNN's weights, with float32 arithmetic, checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto

from emotion_train import half
from emotion_train.cli import main
from emotion_train.export import onnx_probabilities

from .test_quantize import make_model


def test_large_weights_are_stored_as_float16_and_the_outputs_barely_move(tmp_path: Path) -> None:
    source = make_model(tmp_path / "m")
    model = onnx.load(str(source / "model.onnx"))
    halved, converted = half.halve_weights(model, min_elements=64)
    stored = {init.name: init.data_type for init in halved.graph.initializer}
    assert converted == sum(t == TensorProto.FLOAT16 for t in stored.values()) > 0
    assert stored["scale"] == TensorProto.FLOAT  # small constants stay exact
    casts = [n for n in halved.graph.node if n.op_type == "Cast"]
    assert len(casts) == converted and all(n.attribute[0].i == TensorProto.FLOAT for n in casts)
    path = tmp_path / "half.onnx"
    onnx.save(halved, str(path))
    images = np.random.default_rng(1).uniform(0, 255, (32, 48, 48, 1)).astype(np.float32)
    full, halved_probs = onnx_probabilities(source / "model.onnx", images), onnx_probabilities(path, images)
    assert halved_probs.dtype == np.float32
    np.testing.assert_allclose(halved_probs, full, atol=2e-3)
    assert path.stat().st_size < 0.7 * (source / "model.onnx").stat().st_size


def test_the_command_writes_a_checked_model_and_card(tmp_path: Path) -> None:
    source = make_model(tmp_path / "m")  # its middle convolutions have more than MIN_ELEMENTS weights
    out = tmp_path / "half"
    result = CliRunner().invoke(main, ["half", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "weights as float16" in result.output
    card = json.loads((out / "model.json").read_text())
    section = card["weights_storage"]
    assert section["agreement"]["max_abs_diff"] <= half.MAX_ABS_DIFF
    assert section["size_bytes"] == (out / "model.onnx").stat().st_size < section["source"]["size_bytes"]
    assert card["labels"] == json.loads((source / "model.json").read_text())["labels"]
    again = CliRunner().invoke(main, ["half", str(source), "--out", str(source)])
    assert again.exit_code != 0 and "choose a new folder" in again.output
