"""Issue #14, round 2: odd inputs as real files through the real command (a subprocess).

Each class of input must give a clear per-file error with its kind, or a correct result; never a traceback.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from emotion_batch.media.sources import FOLDER

from . import round2_media as media
from .cli_runs import permission_respecting_preexec, run, summary_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory: pytest.TempPathFactory, cli_env, model_args):
    """One run over a folder holding every odd input of #14 (those that do not need permissions)."""
    work = tmp_path_factory.mktemp("round2-work")
    folder = tmp_path_factory.mktemp("round2") / "inputs"
    folder.mkdir()
    video = work / "clip.mp4"
    media.write_test_video(video)
    media.write_strip(folder / "strip_1px.png")
    media.write_strip(folder / "strip_2px.png", width=4096, height=2)
    media.write_float_tiff(folder / "float_unit.tiff")
    media.write_float_tiff(folder / "float_hdr.tif", scale=4000.0)
    media.write_audio_only_mp4(folder / "audio_only.mp4")
    media.write_cover_art_mp4(folder / "podcast.mp4", None, work)
    media.write_cover_art_mp4(folder / "with_cover.mp4", video, work)
    media.write_m2ts(folder / "camcorder.MTS", video)
    media.write_m2ts(folder / "camcorder.m2ts", video)
    media.write_3gp(folder / "phone.3gp", video)
    media.write_animation(folder / "animated.gif", "GIF")
    media.write_animation(folder / "animated.webp", "WEBP")
    media.write_multipage_tiff(folder / "pages.tiff")
    heic = media.write_heic(folder / "photo.heic")
    out = tmp_path_factory.mktemp("round2-out") / "results.csv"
    log_file = out.with_name("run.log")
    result = run(folder, "--out", out, "--no-charts", "--workers", "1", "--log-file", log_file, *model_args,
                 env=cli_env)  # fmt: skip
    return result, out, heic


def _row(out: Path, source: str) -> pd.Series:
    return summary_of(out).loc[source]


def _rows(out: Path, source: str) -> pd.DataFrame:
    rows = pd.read_csv(out)
    return rows[rows["source"] == source]


def test_no_traceback_and_exit_1_for_the_failures(odd_run) -> None:
    result, _, _ = odd_run
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert "internal" not in set(summary_of(odd_run[1])["error_kind"].dropna())


@pytest.mark.parametrize("source", ["strip_1px.png", "strip_2px.png"])
def test_degenerate_strip_is_a_clear_error(odd_run, source) -> None:
    row = _row(odd_run[1], source)
    assert row["status"] == "error"
    assert row["error_kind"] == "undecodable"
    assert "degenerate frame size" in row["error"]


@pytest.mark.parametrize("source", ["audio_only.mp4", "podcast.mp4"])
def test_audio_only_mp4_has_no_video_stream(odd_run, source) -> None:
    row = _row(odd_run[1], source)
    assert row["status"] == "error"
    assert row["error_kind"] == "no_frames"
    assert row["error"].startswith("no video stream"), row["error"]
    assert "corrupt" not in row["error"]
    if source == "podcast.mp4":
        assert "cover art" in row["error"]


def test_cover_art_is_never_analysed_instead_of_the_video(odd_run) -> None:
    row = _row(odd_run[1], "with_cover.mp4")
    assert row["status"] == "ok", row["error"]
    assert row["media_type"] == "video"
    # The real video: 2 s at 10 fps sampled at 2 fps; the cover art would be one still frame.
    assert row["frames_sampled"] == 4
    assert row["duration_s"] == pytest.approx(2.0, abs=0.15)
    assert list(_rows(odd_run[1], "with_cover.mp4")["timestamp_s"]) == pytest.approx([0, 0.5, 1.0, 1.5])


@pytest.mark.parametrize("source", ["float_unit.tiff", "float_hdr.tif"])
def test_float_tiff_is_decoded_and_the_face_found(odd_run, source) -> None:
    row = _row(odd_run[1], source)
    assert row["status"] == "ok", row["error"]
    assert row["media_type"] == "image"
    assert row["faces"] == 1, "the astronaut's face must be found after the conversion to 8 bits"


@pytest.mark.parametrize("source", ["camcorder.MTS", "camcorder.m2ts", "phone.3gp"])
def test_camcorder_and_phone_containers_are_analysed(odd_run, source) -> None:
    row = _row(odd_run[1], source)
    assert row["status"] == "ok", row["error"]
    assert row["media_type"] == "video"
    assert row["frames_sampled"] == 4


@pytest.mark.parametrize("source", ["animated.gif", "animated.webp"])
def test_animation_is_sampled_like_a_video_with_its_frame_durations(odd_run, source) -> None:
    row = _row(odd_run[1], source)
    assert row["status"] == "ok", row["error"]
    assert row["media_type"] == "video"
    assert row["duration_s"] == pytest.approx(sum(media.ANIMATION_DURATIONS_MS) / 1000)
    rows = _rows(odd_run[1], source)
    # Frames at 0, 0.2 and 0.5 s; the 2 fps targets 0 and 0.5 s take frames 0 and 2.
    assert list(rows["frame_index"]) == [0, 2]
    assert list(rows["timestamp_s"]) == pytest.approx([0.0, 0.5])
    assert (rows["n_faces"] == 1).all()
    assert f"{source}: animated" in odd_run[0].stderr


def test_multipage_tiff_pages_are_frames_one_second_apart_without_the_thumbnail(odd_run) -> None:
    row = _row(odd_run[1], "pages.tiff")
    assert row["status"] == "ok", row["error"]
    assert row["media_type"] == "video"
    rows = _rows(odd_run[1], "pages.tiff")
    assert list(rows["frame_index"]) == [0, 1, 2]
    assert list(rows["timestamp_s"]) == pytest.approx([0.0, 1.0, 2.0])
    assert (rows["n_faces"] == 1).all()
    assert "multi-page TIFF with 3 pages" in odd_run[0].stderr


def test_heic_photo_is_analysed_when_pillow_heif_is_installed(odd_run) -> None:
    _, out, heic = odd_run
    if not heic:
        pytest.skip(
            "pillow-heif is not installed: no HEIC file can be written (the missing-package error is tested)"
        )
    row = _row(out, "photo.heic")
    assert row["status"] == "ok", row["error"]
    assert row["faces"] == 1


def test_heic_without_pillow_heif_names_the_package(tmp_path: Path, cli_env, model_args) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    if not media.write_heic(folder / "photo.heic"):
        media.write_fake_heic(folder / "photo.heic")
    blocker = tmp_path / "block"
    (blocker / "pillow_heif").mkdir(parents=True)
    (blocker / "pillow_heif" / "__init__.py").write_text(
        "raise ImportError('pillow_heif hidden by the test')\n"
    )
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    env = {
        **cli_env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")])),
    }
    result = run(folder, "--out", out, "--no-charts", "--workers", "1", *model_args, env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    row = _row(out, "photo.heic")
    assert row["status"] == "error"
    assert row["error_kind"] == "undecodable"
    assert "pillow-heif" in row["error"]


# --- control characters in file names never reach the log unescaped ------------------------------------------
def test_newlines_and_ansi_escapes_in_names_are_escaped_in_both_logs(
    tmp_path: Path, cli_env, model_args
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    evil = "evil\n2026-01-01T00:00:00+0000 ERROR forged\x1b[31m.jpg"
    (folder / evil).write_text("not an image\n")
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    log_file = tmp_path / "out" / "run.log"
    result = run(folder, "--out", out, "--no-charts", "--workers", "1", "--log-file", log_file, *model_args,
                 env=cli_env)  # fmt: skip
    assert result.returncode == 1, result.stderr
    for text in (result.stderr, log_file.read_text(encoding="utf-8")):
        assert "\x1b" not in text
        assert "\\x1b[31m" in text
        assert "evil\\n2026" in text
        for line in text.splitlines():
            assert not line.startswith("2026-01-01T00:00:00"), f"a forged log line: {line!r}"


# --- published files are readable by others -------------------------------------------------------------------
def test_fetched_detector_is_published_0644(tmp_path: Path, yunet_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"EMOTION_BATCH_CACHE_DIR": str(cache)}
    result = run("models", "fetch", "--from", yunet_path, env=env, preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
    installed = cache / yunet_path.name
    assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    # A copy left owner-only by an older version is repaired by the next fetch.
    installed.chmod(0o600)
    result = run("models", "fetch", "--from", yunet_path, env=env, preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(installed.stat().st_mode) == 0o644


def test_published_files_respect_a_stricter_umask(tmp_path: Path, yunet_path: Path) -> None:
    cache = tmp_path / "cache"
    result = run("models", "fetch", "--from", yunet_path, env={"EMOTION_BATCH_CACHE_DIR": str(cache)},
                 preexec_fn=lambda: os.umask(0o027))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((cache / yunet_path.name).stat().st_mode) == 0o640


# --- folders that cannot be listed ------------------------------------------------------------------------------
@pytest.fixture
def locked_folders(tmp_path: Path, astronaut_jpg: Path):
    root = tmp_path / "in"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "astronaut.jpg").write_bytes(astronaut_jpg.read_bytes())
    for name, mode in (("no_access", 0o000), ("search_only", 0o111)):
        (root / name).mkdir()
        (root / name / "hidden.jpg").write_bytes(astronaut_jpg.read_bytes())
        (root / name).chmod(mode)
    yield root
    for name in ("no_access", "search_only"):
        (root / name).chmod(0o755)


def test_unlistable_folders_are_errors_with_a_log_line_and_exit_1(locked_folders: Path, tmp_path: Path,
                                                                  cli_env, model_args) -> None:  # fmt: skip
    preexec = permission_respecting_preexec()  # skips, with the reason, where root cannot be made to obey
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    result = run(locked_folders, "--out", out, "--no-charts", "--workers", "1", *model_args, env=cli_env,
                 preexec_fn=preexec)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    summary = summary_of(out)
    assert summary.loc["ok/astronaut.jpg", "status"] == "ok"
    for name in ("no_access/", "search_only/"):
        row = summary.loc[name]
        assert row["status"] == "error"
        assert row["error_kind"] == "unreadable"
        assert "folder cannot be listed" in row["error"] and "ermission denied" in row["error"]
        assert f"cannot list folder {locked_folders / name.rstrip('/')}" in result.stderr
        assert f"error {name}" in result.stderr


def test_walker_reports_a_folder_it_cannot_list(locked_folders: Path) -> None:
    """discover() itself, in a process that obeys permissions (as root: without CAP_DAC_OVERRIDE)."""
    preexec = permission_respecting_preexec()
    code = (
        "import sys; from emotion_batch.media.sources import discover\n"
        "for s in discover([sys.argv[1]]): print(s.source, s.media_type, s.path)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(locked_folders)], capture_output=True, text=True,
                            preexec_fn=preexec, check=True, timeout=60)  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines == [
        f"no_access/ {FOLDER} {locked_folders / 'no_access'}",
        f"ok/astronaut.jpg image {locked_folders / 'ok' / 'astronaut.jpg'}",
        f"search_only/ {FOLDER} {locked_folders / 'search_only'}",
    ]
