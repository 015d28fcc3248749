"""Issue #17 outputs of a real run: timeline and track tables, thumbnails, report, subtitles; nothing rewritten
on a rerun without changes; the shot column and the rows-format upgrade of issue #16."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd

from emotion_batch.output.subtitles import parse_webvtt
from emotion_batch.output.timeline import TIMELINE_COLUMNS, TRACK_COLUMNS
from emotion_batch.schema import ROW_COLUMNS

from .environment import run_cli


def _fingerprints(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".state" not in str(p)
    }


def test_a_run_writes_tables_thumbnails_report_and_subtitles(
    mixed_folder: Path, cli_env: dict, model_args: list, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    shutil.copytree(mixed_folder, inputs)
    (inputs / "clips" / "not_a_video.mp4").unlink()  # a failed file is retried, and so rewritten, every run
    mixed_folder = inputs
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    first = run_cli(mixed_folder, "--out", out, "--subtitles", "--bin", "1", *model_args, env=cli_env)
    assert first.returncode == 0, first.stderr
    rows = pd.read_csv(out)
    assert list(rows.columns) == list(ROW_COLUMNS) and "shot" in rows.columns
    assert set(rows.loc[rows["source"] == "astronaut.jpg", "shot"]) == {0}

    timeline = pd.read_csv(out.with_name("r_timeline.csv"))
    tracks = pd.read_csv(out.with_name("r_tracks.csv"))
    assert list(timeline.columns) == list(TIMELINE_COLUMNS) and list(tracks.columns) == list(TRACK_COLUMNS)
    video = timeline[timeline["source"] == "clips/moving_face.mp4"]
    assert len(video) >= 2 and (video["bin_end_s"] - video["bin_start_s"]).max() <= 1.0  # --bin 1
    assert timeline["samples"].sum() == (rows["n_faces"] > 0).sum()

    charts = out.with_name("r_charts")
    thumbs = sorted(p.name for p in charts.glob("*.jpg"))
    assert len(thumbs) == len(tracks)  # one picture per person, video and photo
    assert "astronaut.jpg.shot-0.track-0.jpg" in thumbs
    vtt = charts / "clips__moving_face.mp4.emotions.vtt"
    assert parse_webvtt(vtt.read_text())

    report = out.with_name("r_report.html").read_text()
    assert 'id="videos"' in report and "clips/moving_face.mp4" in report
    assert report.count("data:image/jpeg;base64,") >= len(thumbs)

    before = _fingerprints(out.parent)
    again = run_cli(mixed_folder, "--out", out, "--subtitles", "--bin", "1", *model_args, env=cli_env)
    assert again.returncode == 0 and "already up to date" in again.stderr
    assert _fingerprints(out.parent) == before  # report, overview, charts, thumbnails: not one byte rewritten

    (charts / thumbs[0]).unlink()
    (charts / "clips__moving_face.mp4.timeline.png").unlink()
    run_cli(mixed_folder, "--out", out, "--subtitles", "--bin", "1", *model_args, env=cli_env)
    assert (charts / thumbs[0]).is_file() and (charts / "clips__moving_face.mp4.timeline.png").is_file()

    quiet = tmp_path / "q.csv"
    result = run_cli(mixed_folder, "--out", quiet, "--no-report", "--no-charts", *model_args, env=cli_env)
    assert result.returncode == 0
    assert not quiet.with_name("q_report.html").exists() and not quiet.with_name("q_charts").exists()
    assert quiet.with_name("q_timeline.csv").is_file() and quiet.with_name("q_tracks.csv").is_file()


def test_an_older_rows_format_is_analysed_again(
    mixed_folder: Path, cli_env: dict, model_args: list, tmp_path: Path
) -> None:
    """Rows of an older emotion-batch (no shot column) are not mixed with new ones, nor refused: redone."""
    out = tmp_path / "r.csv"
    assert run_cli(mixed_folder, "--out", out, "--no-charts", *model_args, env=cli_env).returncode == 1
    db = sqlite3.connect(tmp_path / "r.csv.state" / "state.sqlite3")
    settings = json.loads(db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()[0])
    settings["rows_format"] = 3
    db.execute("UPDATE meta SET value = ? WHERE key = 'settings'", (json.dumps(settings),))
    db.execute("UPDATE meta SET value = ? WHERE key = 'fingerprint'", (json.dumps("older"),))
    db.commit()
    db.close()
    result = run_cli(mixed_folder, "--out", out, "--no-charts", *model_args, env=cli_env)
    assert result.returncode == 1, result.stderr
    assert "rows format 3, this one writes 4" in result.stderr and "analysing 4 file(s)" in result.stderr
    assert "shot" in pd.read_csv(out).columns
