"""End to end: the installed `emotion-batch` command on real faces, a generated video and bad inputs."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotion_batch.schema import EMOTIONS, ROW_COLUMNS, SUMMARY_COLUMNS

from .environment import run_cli, shared_path
from .test_reports import assert_real_png

pytestmark = pytest.mark.slow
TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (DEBUG|INFO|WARNING|ERROR) ")


@pytest.fixture(scope="module")
def mixed_run(mixed_folder: Path, cli_env, model_args, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out") / "results.csv"
    result = run_cli(mixed_folder, "--out", out, *model_args, env=cli_env)
    return result, out


def test_exit_code_1_names_the_failed_file(mixed_run) -> None:
    result, _ = mixed_run
    assert result.returncode == 1, result.stderr
    assert "1 file(s) failed" in result.stderr
    assert "clips/not_a_video.mp4: not a video: the file contains plain text" in result.stderr


def test_log_is_plain_timestamped_lines_when_not_a_terminal(mixed_run) -> None:
    result, _ = mixed_run
    assert "\x1b" not in result.stderr and "\r" not in result.stderr
    records = [
        line for line in result.stderr.splitlines() if not line.startswith("  ")
    ]  # indented: failure list
    assert records and all(TIMESTAMPED.match(line) for line in records), result.stderr
    assert result.stdout == ""


def test_csv_columns_and_order(mixed_run) -> None:
    _, out = mixed_run
    rows = pd.read_csv(out)
    assert list(rows.columns) == list(ROW_COLUMNS)
    key = rows[["source", "frame_index"]].assign(face=rows["face_index"].fillna(-1))
    assert key.equals(key.sort_values(["source", "frame_index", "face"]).reset_index(drop=True))
    assert list(dict.fromkeys(rows["source"])) == [
        "astronaut.jpg",
        "clips/moving_face.mp4",
        "rocket_no_face.png",
    ]


def test_csv_rows_per_file(mixed_run) -> None:
    _, out = mixed_run
    rows = pd.read_csv(out)
    photo = rows[rows["source"] == "astronaut.jpg"]
    assert photo[["frame_index", "timestamp_s", "n_faces", "face_index", "track_id"]].values.tolist() == [
        [0, 0, 1, 0, 0]
    ]
    assert photo["w"].iloc[0] > 60

    video = rows[rows["source"] == "clips/moving_face.mp4"]
    assert video["frame_index"].tolist() == [0, 13, 25, 38, 50, 63, 75, 88]  # 2 samples/s of a 25 fps video
    assert video["timestamp_s"].tolist() == pytest.approx([0.0, 0.52, 1.0, 1.52, 2.0, 2.52, 3.0, 3.52])
    assert (video["n_faces"] == 1).all()
    assert set(video["track_id"]) == {0}, "the moving face must keep one track id"
    assert video["x"].is_monotonic_increasing

    empty = rows[rows["source"] == "rocket_no_face.png"]
    assert len(empty) == 1 and empty["n_faces"].iloc[0] == 0
    assert empty[list(ROW_COLUMNS[5:])].isna().all(axis=None), "a frame without faces has empty face fields"


def test_probabilities_are_unrounded_and_consistent(mixed_run) -> None:
    _, out = mixed_run
    faces = pd.read_csv(out).dropna(subset=["face_index"])
    probs = faces[list(EMOTIONS)].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (faces["emotion"] == [EMOTIONS[k] for k in probs.argmax(axis=1)]).all()
    np.testing.assert_allclose(faces["confidence"], probs.max(axis=1))
    assert any(len(line.split(",")[14]) > 6 for line in out.read_text().splitlines()[1:3]), "rounded?"


def test_summary(mixed_run) -> None:
    _, out = mixed_run
    summary = pd.read_csv(out.with_name("results_summary.csv"))
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    by = summary.set_index("source")
    assert by["status"].to_dict() == {
        "astronaut.jpg": "ok",
        "clips/moving_face.mp4": "ok",
        "clips/not_a_video.mp4": "error",
        "notes.txt": "skipped",
        "rocket_no_face.png": "ok",
    }
    assert by.loc["clips/not_a_video.mp4", "error"] == "not a video: the file contains plain text"
    assert by.loc["clips/not_a_video.mp4", "error_kind"] == "undecodable"
    assert by.loc["notes.txt", "error"] == "not a media file extension (.txt)"
    video = by.loc["clips/moving_face.mp4"]
    assert (video["media_type"], video["frames_sampled"], video["frames_with_faces"]) == ("video", 8, 8)
    assert (video["faces"], video["tracks"]) == (8, 1)
    assert video["duration_s"] == pytest.approx(4.0, abs=0.05)
    assert by.loc["rocket_no_face.png", "faces"] == 0 and pd.isna(
        by.loc["rocket_no_face.png", "dominant_emotion"]
    )
    assert (by["detector"] == "yunet:face_detection_yunet_2023mar.onnx").all()
    assert (by["detector_sha256"] == "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4").all()
    assert by["model_sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert by.loc["astronaut.jpg", f"mean_{by.loc['astronaut.jpg', 'dominant_emotion']}"] == pytest.approx(
        max(by.loc["astronaut.jpg", [f"mean_{e}" for e in EMOTIONS]])
    )


def test_charts(mixed_run) -> None:
    _, out = mixed_run
    charts = out.with_name("results_charts")
    drawn = sorted(p.name for p in charts.iterdir() if not p.name.endswith(".jpg"))  # .jpg: track thumbnails
    assert drawn == ["clips__moving_face.mp4.timeline.png", "overview.png"]
    assert_real_png(charts / "clips__moving_face.mp4.timeline.png", 1000, 300)
    assert_real_png(charts / "overview.png", 1000, 200)


def test_astronaut_is_happy_with_the_bundled_model(mixed_run, bundled_model: Path) -> None:
    _, out = mixed_run
    rows = pd.read_csv(out)
    assert rows.loc[rows["source"] == "astronaut.jpg", "emotion"].tolist() == ["happy"]
    video = rows[rows["source"] == "clips/moving_face.mp4"]
    assert (video["emotion"] == "happy").mean() >= 0.75


def test_rerun_with_workers_gives_identical_files(
    mixed_folder: Path, mixed_run, cli_env, model_args, tmp_path
) -> None:
    _, first = mixed_run
    out = tmp_path / "results.csv"
    result = run_cli(mixed_folder, "--out", out, "--workers", "2", "--no-charts", *model_args, env=cli_env)
    assert result.returncode == 1
    assert out.read_bytes() == first.read_bytes()
    drop = ["elapsed_s"]
    pd.testing.assert_frame_equal(
        pd.read_csv(out.with_name("results_summary.csv")).drop(columns=drop),
        pd.read_csv(first.with_name("results_summary.csv")).drop(columns=drop),
    )


def test_parquet_annotations_log_file_and_env_defaults(
    mixed_folder: Path, cli_env, model_args, tmp_path
) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "r.parquet"
    log_file = tmp_path / "run.log"
    result = run_cli(
        mixed_folder, "--out", out, "--annotate", tmp_path / "ann", "--log-file", log_file, "--quiet",
        "--exclude", "not_a_video.mp4", *model_args, env={**cli_env, "EMOTION_BATCH_FPS": "5"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert " INFO " not in result.stderr  # --quiet: warnings and errors only
    rows = pd.read_parquet(out)
    assert list(rows.columns) == list(ROW_COLUMNS)
    assert (rows["source"] == "clips/moving_face.mp4").sum() == 20  # EMOTION_BATCH_FPS=5 over 4 s
    assert pd.read_parquet(tmp_path / "r_summary.parquet")["status"].tolist() == ["ok", "ok", "skipped", "ok"]
    annotated = sorted(
        p.relative_to(tmp_path / "ann").as_posix() for p in (tmp_path / "ann").rglob("*") if p.is_file()
    )
    assert annotated[0] == "astronaut.jpg" and annotated[-1] == "rocket_no_face.png"
    assert len(annotated) == 22 and "clips/moving_face.mp4/frame_000005.jpg" in annotated
    lines = log_file.read_text().splitlines()
    assert lines and all(TIMESTAMPED.match(line) for line in lines)
    assert any("done in" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fps", "2", "--every", "3"], "--fps and --every are mutually exclusive"),
        (["--start", "5", "--end", "2"], "end (2.0) must be after start (5.0)"),
        (["--detector", "haar"], "Haar cascades are not available"),
        (["--quiet", "--verbose"], "mutually exclusive"),
        (["--fps", "0"], "Invalid value for '--fps'"),
        (["--working-width", "16"], "Invalid value for '--working-width'"),
    ],
)
def test_usage_errors_exit_2(
    mixed_folder: Path, cli_env, model_args, tmp_path, args, message, invoke
) -> None:
    if "haar" in args:
        import cv2

        if hasattr(cv2, "CascadeClassifier"):
            pytest.skip("this OpenCV has Haar cascades")
    result = invoke(mixed_folder, "--out", tmp_path / "r.csv", *args, *model_args, env=cli_env)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not (tmp_path / "r.csv").exists()
    assert not (tmp_path / "r.csv.state").exists()  # nothing was done: no state folder either


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, t: [t / "missing-folder"], "does not exist"),
        (lambda d, t: [d, "--out", t / "no" / "such" / "dir" / "r.csv"], "output folder does not exist"),
        (lambda d, t: [d], "Missing option '--out'"),
        (
            lambda d, t: [d, "--out", t / "r.csv", "--detector-model", t / "none.onnx"],
            "YuNet model file not found",
        ),
    ],
)
def test_configuration_errors_exit_2(
    mixed_folder: Path, cli_env, tmp_path, make_args, message, invoke
) -> None:
    result = invoke(*make_args(mixed_folder, tmp_path), env=cli_env)
    assert result.exit_code == 2
    assert message in result.stderr


def test_model_without_card_is_a_usage_error(mixed_folder: Path, cli_env, tmp_path: Path, invoke) -> None:
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(b"the card is looked for before the model is loaded")
    result = invoke(mixed_folder, "--out", tmp_path / "r.csv", "--model", lonely, env=cli_env)
    assert result.exit_code == 2 and "model card not found" in result.stderr


def test_terminal_gets_progress_and_a_summary_table(
    mixed_folder: Path, cli_env, model_args, tmp_path
) -> None:
    import shutil

    exe = shutil.which("emotion-batch")
    if exe is None:
        pytest.skip("emotion-batch is not installed as a console script")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [exe, mixed_folder, "--out", tmp_path / "r.csv", "--no-charts", *model_args],
        stdout=subprocess.PIPE, stderr=follower, env={**os.environ, **cli_env, "COLUMNS": "160"},
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(leader)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 1
    assert "emotion-batch: 5 file(s)" in screen  # the table title
    assert "clips/moving_face.mp4" in screen and "the file contains plain text" in screen


def test_help_and_version() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and "models" in result.stdout and "analyze" in result.stdout
    result = run_cli("analyze", "--help")
    assert "EMOTION_BATCH_FPS" in result.stdout and "--max-frames" in result.stdout
    assert run_cli("--version").stdout.startswith("emotion-batch")


def test_models_info_shows_the_cards_benchmark_figures(bundled_model: Path, tmp_path: Path) -> None:
    """What a user reads first about a model: its splits' accuracy, and the benchmark's figures if the card has them."""
    import json

    card = json.loads(bundled_model.with_suffix(".json").read_text())
    info = run_cli("models", "info")
    assert info.returncode == 0, info.stderr
    for split, figures in card.get("generalisation", {}).items():
        fer2013, fer_plus = 100 * figures["accuracy"], 100 * figures["ferplus"]["majority_accuracy"]
        line = f"  {split} benchmark: FER-2013 labels {fer2013:.2f}%, FER+ majority {fer_plus:.2f}%, robustness mean"
        assert line in info.stdout
        assert f"ms/face on {figures['cpu']}" in info.stdout

    bare = tmp_path / "bare.onnx"  # a card without benchmark figures prints none, and no error
    bare.write_bytes(bundled_model.read_bytes())
    bare.with_suffix(".json").write_text(json.dumps({k: v for k, v in card.items() if k != "generalisation"}))
    info = run_cli("models", "info", "--model", bare)
    assert info.returncode == 0 and "benchmark:" not in info.stdout and "test: accuracy" in info.stdout


def test_shared_media_run(cli_env, model_args, tmp_path: Path) -> None:
    """The real videos and photos of ../shared/media: every file is analysed; the negatives have no face."""
    media = shared_path("media")
    out = tmp_path / "results.csv"
    result = run_cli(media, "--out", out, *model_args, env=cli_env, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(tmp_path / "results_summary.csv").set_index("source")
    assert (summary["status"] == "ok").all()
    assert len(summary) == 30
    negatives = summary[summary.index.str.contains("NEGATIVE")]
    assert len(negatives) == 2 and (negatives["faces"] == 0).all()
    assert (summary.drop(negatives.index)["faces"] > 0).all()
    rows = pd.read_csv(out)
    assert list(rows.columns) == list(ROW_COLUMNS)
    assert (
        len(rows) == summary["frames_sampled"].sum() + (summary["faces"] - summary["frames_with_faces"]).sum()
    )
    charts = sorted(p.name for p in (tmp_path / "results_charts").glob("*.png"))
    assert "overview.png" in charts and len(charts) == 1 + 7  # every video with a face has a timeline
