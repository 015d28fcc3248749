"""Issue #17 outputs of a real run: timeline and track tables, thumbnails, report, subtitles; nothing rewritten
on a rerun without changes; the shot column, faces without a track id and the rows-format upgrade of issue #16."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd

from emotion_batch.analysis import ROWS_FORMAT
from emotion_batch.output.subtitles import parse_webvtt
from emotion_batch.output.timeline import TIMELINE_COLUMNS, TRACK_COLUMNS
from emotion_batch.schema import ROW_COLUMNS

from .environment import run_cli
from .media_factory import write_passing_face_video


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
    kept = {p.name: p.stat().st_ino for p in out.with_name("r.csv.state").glob("thumbnails/*/*.jpg")}
    assert {n: (charts / n).stat().st_ino for n in thumbs} == kept  # the state's files, not copies of them
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
    assert f"rows format 3, this one writes {ROWS_FORMAT}" in result.stderr
    assert "analysing 4 file(s)" in result.stderr
    assert "shot" in pd.read_csv(out).columns


def test_a_face_seen_once_is_in_the_rows_and_summary_not_in_the_per_person_outputs(
    cli_env: dict, model_args: list, tmp_path: Path
) -> None:
    """A second face beside the first in one sample only (1.0 s): its row is written, with an empty track_id, and
    counted in the summary's faces; no table, chart, thumbnail, subtitle or report card makes it a person."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_passing_face_video(inputs / "passing.mp4", visible=(23, 28))
    out = tmp_path / "r.csv"
    done = run_cli(inputs, "--out", out, "--subtitles", "--bin", "1", *model_args, env=cli_env)
    assert done.returncode == 0, done.stderr

    rows = pd.read_csv(out)
    once = rows[rows["face_index"] == 1]
    assert once[["timestamp_s", "n_faces"]].values.tolist() == [[1.0, 2]] and once["track_id"].isna().all()
    assert set(rows.loc[rows["face_index"] == 0, "track_id"]) == {0} and len(rows) == 9
    summary = pd.read_csv(out.with_name("r_summary.csv")).iloc[0]
    assert (summary["frames_sampled"], summary["faces"], summary["tracks"]) == (8, 9, 1)

    tracks = pd.read_csv(out.with_name("r_tracks.csv"))
    assert tracks[["track_id", "samples", "first_seen_s"]].values.tolist() == [[0, 8, 0.0]]
    timeline = pd.read_csv(out.with_name("r_timeline.csv"))
    assert set(timeline["track_id"]) == {0} and timeline["samples"].sum() == 8
    charts = out.with_name("r_charts")
    assert sorted(p.name for p in charts.glob("*.jpg")) == ["passing.mp4.shot-0.track-0.jpg"]
    vtt = (charts / "passing.mp4.emotions.vtt").read_text()
    assert "track 0" in vtt and "track 1" not in vtt and "None" not in vtt
    assert (charts / "passing.mp4.timeline.png").is_file()
    report = out.with_name("r_report.html").read_text()
    assert "track 0" in report and "track 1" not in report and "track None" not in report


def test_tables_of_an_incremental_run_equal_those_of_a_fresh_one(
    mixed_folder: Path, astronaut_jpg: Path, cli_env: dict, model_args: list, tmp_path: Path
) -> None:
    """Files kept from earlier runs take their table rows from the tables the last run wrote; after files are
    added, removed and a table is edited by hand, the tables are byte for byte those of one fresh run."""
    inputs = tmp_path / "in"
    shutil.copytree(mixed_folder, inputs)
    (inputs / "clips" / "not_a_video.mp4").unlink()
    out = tmp_path / "inc" / "r.csv"
    args = ("--out", out, "--no-charts", "--no-report", "--bin", "1", *model_args)
    assert run_cli(inputs, *args, env=cli_env).returncode == 0
    shutil.copy(astronaut_jpg, inputs / "astronaut_again.jpg")  # added
    (inputs / "rocket_no_face.png").unlink()  # removed
    assert run_cli(inputs, *args, env=cli_env).returncode == 0
    tracks = out.with_name("r_tracks.csv")
    tracks.write_text(tracks.read_text().replace("clips/moving_face.mp4", "edited.mp4"))  # not to be trusted
    shutil.copy(astronaut_jpg, inputs / "astronaut_third.jpg")
    assert run_cli(inputs, *args, env=cli_env).returncode == 0
    fresh = tmp_path / "fresh" / "r.csv"
    assert run_cli(inputs, "--out", fresh, *args[2:], env=cli_env).returncode == 0
    for name in ("r.csv", "r_timeline.csv", "r_tracks.csv"):
        assert (out.parent / name).read_bytes() == (fresh.parent / name).read_bytes(), name
    assert "edited.mp4" not in tracks.read_text()
    assert set(pd.read_csv(tracks)["source"]) >= {
        "astronaut.jpg",
        "astronaut_again.jpg",
        "clips/moving_face.mp4",
    }


def test_only_the_overview_pages_that_changed_are_redrawn(
    cli_env: dict, model_args: list, tmp_path: Path
) -> None:
    """A new file that sorts last changes only the last overview page; a deleted page is drawn again."""
    import cv2

    from emotion_batch.output.charts import FILES_PER_OVERVIEW

    from .media_factory import no_face_bgr

    small = cv2.resize(no_face_bgr(), (48, 64))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(FILES_PER_OVERVIEW + 3):
        cv2.imwrite(str(inputs / f"a_{i:03d}.png"), small)
    out = tmp_path / "r.csv"
    args = ("--out", out, "--no-report", *model_args)
    assert run_cli(inputs, *args, env=cli_env).returncode == 0
    charts = tmp_path / "r_charts"
    first, second = charts / "overview.png", charts / "overview-2.png"
    before = {p.name: p.stat().st_mtime_ns for p in (first, second)}
    cv2.imwrite(str(inputs / "z_new.png"), small)
    assert run_cli(inputs, *args, env=cli_env).returncode == 0
    assert first.stat().st_mtime_ns == before["overview.png"]  # its 60 files did not change
    assert second.stat().st_mtime_ns != before["overview-2.png"]  # it lists the new file
    first.unlink()
    assert run_cli(inputs, *args, env=cli_env).returncode == 0
    assert first.is_file() and second.stat().st_size > 0


def test_a_thumbnail_deleted_from_the_charts_folder_comes_back(
    mixed_folder: Path, cli_env: dict, model_args: list, tmp_path: Path
) -> None:
    out = tmp_path / "r.csv"
    args = (mixed_folder, "--out", out, "--no-report", *model_args)
    run_cli(*args, env=cli_env)
    pictures = sorted((tmp_path / "r_charts").glob("*.jpg"))
    assert pictures
    kept = pictures[0].read_bytes()
    pictures[0].unlink()
    run_cli(*args, env=cli_env)
    assert pictures[0].read_bytes() == kept
