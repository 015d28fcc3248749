"""The Python API returns the same table the command writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import emotion_batch
from emotion_batch.schema import ROW_COLUMNS
from emotion_batch.vision.classification import bundled_model_path

from .environment import run_cli


@pytest.fixture
def model_kwargs(request: pytest.FixtureRequest) -> dict:
    """The bundled model when it exists, else the tiny contract model (needs onnx)."""
    return {} if bundled_model_path().is_file() else {"model": request.getfixturevalue("tiny_model")}


def test_analyze_matches_the_cli(
    mixed_folder: Path, detector_env: Path, model_kwargs: dict, tmp_path: Path
) -> None:
    df = emotion_batch.analyze(mixed_folder, progress=False, **model_kwargs)
    assert list(df.columns) == list(ROW_COLUMNS)
    assert str(df["track_id"].dtype) == "Int64" and str(df["happy"].dtype) == "float64"
    summary = df.attrs["summary"]
    assert summary["status"].tolist() == ["ok", "ok", "error", "skipped", "ok"]
    timeline = df.attrs["timeline"]
    assert timeline["samples"].sum() == (df["n_faces"] > 0).sum() and "dominant_emotion" in timeline

    out = tmp_path / "r.csv"
    model_args = ["--model", str(model_kwargs["model"])] if model_kwargs else []
    result = run_cli(mixed_folder, "--out", out, "--no-charts", *model_args)
    assert result.returncode == 1
    pd.testing.assert_frame_equal(
        pd.read_csv(out), pd.read_csv(pd.io.common.StringIO(df.to_csv(index=False)))
    )


def test_analyze_options_and_errors(
    astronaut_jpg: Path, moving_face_video, detector_env, model_kwargs
) -> None:
    df = emotion_batch.analyze(
        [astronaut_jpg, moving_face_video.path],
        fps=4,
        max_frames=5,
        include="*.mp4",
        progress=False,
        **model_kwargs,
    )
    assert df["source"].unique().tolist() == ["moving_face.mp4"]
    assert df["frame_index"].tolist() == [0, 7, 13, 19, 25]  # first frames at or after 0, 0.25, 0.5 ...
    with pytest.raises(emotion_batch.ConfigError, match="either fps or every"):
        emotion_batch.analyze(astronaut_jpg, fps=2, every=3, progress=False, **model_kwargs)
    with pytest.raises(emotion_batch.ConfigError, match="unexpected keyword argument 'colour'"):
        emotion_batch.analyze(astronaut_jpg, colour=True, progress=False, **model_kwargs)


def test_analyze_shows_a_tqdm_bar(astronaut_jpg: Path, detector_env, model_kwargs, capsys) -> None:
    emotion_batch.analyze(astronaut_jpg, **model_kwargs)
    assert "1/1" in capsys.readouterr().err


def test_analyze_with_out_is_the_incremental_run(
    mixed_folder: Path, detector_env: Path, model_kwargs: dict, tmp_path: Path
) -> None:
    """`out=` writes what the command writes, keeps finished files on a rerun, and holds the output's lock."""
    from emotion_batch.batch.incremental import OutputPaths, SettingsChanged
    from emotion_batch.batch.locking import LockHeld, OutputLock
    from emotion_batch.batch.state import StateStore

    out = tmp_path / "api.csv"
    first = emotion_batch.analyze(mixed_folder, out=out, progress=False, **model_kwargs)
    assert out.is_file() and (tmp_path / "api_summary.csv").is_file()
    pd.testing.assert_frame_equal(first, emotion_batch.analyze(mixed_folder, progress=False, **model_kwargs))
    with StateStore(OutputPaths.for_out(out).database) as state:
        done = {s: r.finished_at for s, r in state.records().items() if r.status == "ok"}
    again = emotion_batch.analyze(mixed_folder, out=out, progress=False, **model_kwargs)
    pd.testing.assert_frame_equal(first, again)
    with StateStore(OutputPaths.for_out(out).database) as state:
        assert {s: r.finished_at for s, r in state.records().items() if r.status == "ok"} == done
    with pytest.raises(SettingsChanged):
        emotion_batch.analyze(mixed_folder, out=out, fps=5, progress=False, **model_kwargs)
    with OutputLock(OutputPaths.for_out(out).lock), pytest.raises(LockHeld):
        emotion_batch.analyze(mixed_folder, out=out, progress=False, **model_kwargs)
