"""Garbage in: every bad input of the reliability list, as a real file, through the real command.

One run over a folder holding all of them must report each file with a specific cause and error kind, analyse
the good ones correctly, and exit 1. Outputs in odd places (inside the input, missing or read-only folders, a
full disk) are tested with their own runs.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import signal
import struct
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_batch.media.inspection import (
    FileProblem,
    decoder_path,
    image_size,
    inspect,
    iso_structure_problem,
    needs_safe_alias,
    sniff,
)
from emotion_batch.schema import ERROR_KINDS, SUMMARY_COLUMNS

from .bad_media import BAD_INPUTS, EXTRA_SOURCES, write_bad_inputs
from .cli_runs import last_plan, permission_respecting_preexec, plan, run, summary_of
from .media_factory import astronaut_bgr, write_moving_face_video

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory, moving_face_video, cli_env, model_args):
    """All bad inputs plus an unreadable photo, analysed in one run with file permissions enforced."""
    folder = tmp_path_factory.mktemp("bad") / "inputs"
    write_bad_inputs(folder, moving_face_video.path)
    _, data = cv2.imencode(".jpg", astronaut_bgr())
    unreadable = folder / "unreadable.jpg"
    unreadable.write_bytes(data.tobytes())
    unreadable.chmod(0)
    try:
        preexec = permission_respecting_preexec()
        enforced = True
    except pytest.skip.Exception:
        preexec, enforced = None, False
    out = tmp_path_factory.mktemp("bad-out") / "results.csv"
    result = run(folder, "--out", out, "--no-charts", "--workers", "2", *model_args, env=cli_env,
                 preexec_fn=preexec)  # fmt: skip
    return result, out, enforced


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.source)
def test_each_bad_input_is_reported_with_its_cause(bad_run, case) -> None:
    _, out, _ = bad_run
    row = summary_of(out).loc[case.source]
    assert row["status"] == case.status, row["error"]
    if case.status == "ok":
        assert pd.isna(row["error"]) and pd.isna(row["error_kind"])
        assert row["frames_sampled"] >= 1 and row["faces"] >= 1, "the astronaut's face must be found"
    else:
        assert case.message in row["error"]
        assert row["error_kind"] == case.error_kind


def test_the_batch_goes_on_and_exits_1_listing_every_failure(bad_run) -> None:
    result, out, _ = bad_run
    assert result.returncode == 1, result.stderr
    summary = summary_of(out)
    assert list(summary.reset_index().columns) == list(SUMMARY_COLUMNS)
    failed = summary[summary["status"] == "error"]
    assert set(failed["error_kind"]) <= set(ERROR_KINDS)
    for source, message in failed["error"].items():
        assert f"  {source}: {message}" in result.stderr  # named with its cause in the final list
    assert len(summary) == len(BAD_INPUTS) + len(EXTRA_SOURCES) + 1
    for source, (status, kind, message) in EXTRA_SOURCES.items():
        assert (summary.loc[source, "status"], summary.loc[source, "error_kind"]) == (status, kind)
        assert message in summary.loc[source, "error"]


def test_unreadable_file_is_permission_denied(bad_run) -> None:
    _, out, enforced = bad_run
    if not enforced:
        pytest.skip("running as root without the ability to drop CAP_DAC_OVERRIDE")
    row = summary_of(out).loc["unreadable.jpg"]
    assert (row["status"], row["error_kind"]) == ("error", "unreadable")
    assert row["error"] == "permission denied: the file cannot be read"


def test_colour_variants_agree_with_the_plain_photo(bad_run) -> None:
    """16-bit, RGBA, greyscale and CMYK encodings of one photo: one face, same box, similar emotions."""
    _, out, _ = bad_run
    rows = pd.read_csv(out).set_index("source")
    reference = rows.loc["png_content.jpg"]
    for name in ("sixteen_bit.png", "rgba.png", "greyscale.jpg", "cmyk.jpg"):
        row = rows.loc[name]
        assert row["n_faces"] == 1, name
        assert abs(row["x"] - reference["x"]) <= 4 and abs(row["w"] - reference["w"]) <= 6, name
        assert row["emotion"] == reference["emotion"] or name == "greyscale.jpg", name


def test_exif_rotated_photo_is_analysed_the_right_way_up(bad_run) -> None:
    _, out, _ = bad_run
    row = pd.read_csv(out).set_index("source").loc["exif_rotated.jpg"]
    assert row["n_faces"] == 1
    # Displayed upright the photo is 400 wide and 512 high; sideways the box would not fit that frame.
    assert row["x"] + row["w"] <= 400 and row["y"] + row["h"] <= 512
    assert row["h"] >= 0.8 * row["w"], "an upright face box is about as tall as wide or taller"


def test_file_names_that_are_not_ascii_or_not_utf8(bad_run) -> None:
    _, out, _ = bad_run
    text = out.read_bytes().decode("utf-8")  # strictly valid UTF-8, whatever the file names
    rows = pd.read_csv(io.StringIO(text))
    for name in ("café ☺ 日本.mp4", r"caf\xe9-latin1.mp4", "100% clip %d.mp4"):
        video = rows[rows["source"] == name]
        assert len(video) == 8 and (video["n_faces"] == 1).all(), name
    assert (rows["source"] == r"\xff\xfe-photo.jpg").sum() == 1
    summary = summary_of(out)
    assert summary.loc[r"caf\xe9-latin1.mp4", "path"].endswith(r"caf\xe9-latin1.mp4")


def test_videos_without_a_usable_frame_rate_get_increasing_timestamps(bad_run) -> None:
    _, out, _ = bad_run
    rows = pd.read_csv(out)
    for name in ("zero_fps.avi", "zero_timescale.mp4"):
        video = rows[rows["source"] == name]
        assert len(video) >= 1, name
        assert np.isfinite(video["timestamp_s"]).all() and video["timestamp_s"].is_monotonic_increasing, name


def test_content_decides_over_a_wrong_extension(bad_run) -> None:
    result, out, _ = bad_run
    summary = summary_of(out)
    assert summary.loc["jpeg_content.mp4", "media_type"] == "image"
    assert summary.loc["png_content.jpg", "media_type"] == "image"
    assert "jpeg_content.mp4: the content is JPEG although the extension .mp4 says video" in result.stderr


def test_workers_print_nothing_of_their_own(bad_run) -> None:
    """Native decoder chatter (libpng, FFmpeg) from workers must not break the plain log format."""
    result, _, _ = bad_run
    assert result.stdout == ""
    for line in result.stderr.splitlines():
        assert line.startswith(("20", "  ")), line  # timestamped records, or the indented failure list


# --- outputs in awkward places ------------------------------------------------------------------------------------
def test_outputs_inside_the_input_folder_are_never_ingested(
    tmp_path: Path, astronaut_jpg: Path, cli_env, model_args
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(astronaut_jpg, folder / "astronaut.jpg")
    args = [folder, "--out", folder / "results.csv", "--annotate", folder / "annotated", *model_args]
    for _ in range(2):
        result = run(*args, env=cli_env)
        assert result.returncode == 0, result.stderr
    # Charts (PNG), annotations (JPEG), the summary and the state folder all sit inside the input folder.
    assert (folder / "results_charts").is_dir() and (folder / "annotated" / "astronaut.jpg").is_file()
    assert (folder / "results.csv.state" / "state.sqlite3").is_file()
    assert summary_of(folder / "results.csv").index.tolist() == ["astronaut.jpg"]
    assert last_plan(folder / "results.csv") == plan(0, kept=1)


@pytest.mark.parametrize("where", ["missing", "read-only"])
def test_unusable_output_folder_is_an_error_before_any_work(
    tmp_path: Path, astronaut_jpg: Path, cli_env, model_args, where
) -> None:
    target = tmp_path / "out" if where == "read-only" else tmp_path / "no" / "out"  # two levels missing
    preexec = None
    if where == "read-only":
        target.mkdir()
        target.chmod(0o555)
        preexec = permission_respecting_preexec()
    result = run(astronaut_jpg, "--out", target / "r.csv", *model_args, env=cli_env, preexec_fn=preexec)
    assert result.returncode == 2
    expected = "output folder does not exist" if where == "missing" else "cannot write to output folder"
    assert expected in result.stderr and str(target) in result.stderr
    assert "Permission denied" in result.stderr or where == "missing"
    assert "analysing" not in result.stderr and "detector" not in result.stderr  # nothing was started
    assert not target.exists() or list(target.iterdir()) == []


def test_a_missing_output_folder_whose_parent_exists_is_created(
    tmp_path: Path, astronaut_jpg: Path, cli_env, model_args
) -> None:
    out = tmp_path / "new" / "r.csv"
    result = run(astronaut_jpg, "--out", out, *model_args, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(out)["emotion"].tolist() == ["happy"]


def test_full_disk_leaves_the_previous_results_intact(
    tmp_path: Path, moving_face_video, cli_env, model_args
) -> None:
    """Simulated with a real file-size limit (RLIMIT_FSIZE): writes past it fail like on a full disk."""
    folder, out = tmp_path / "in", tmp_path / "out" / "r.csv"
    folder.mkdir()
    out.parent.mkdir()
    for i in range(3):
        shutil.copy(moving_face_video.path, folder / f"v{i}.mp4")
    args = [folder, "--out", out, "--no-charts", "--every", "1", *model_args]
    assert run(*args, env=cli_env).returncode == 0
    before = out.read_bytes(), out.with_name("r_summary.csv").read_bytes()
    assert len(before[0]) > 60_000

    shutil.copy(moving_face_video.path, folder / "v3.mp4")  # a new file: results must grow past the limit
    limit = 48 * 1024  # above every shard, the state store and the summary; below the new results file

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get an error from write() instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = run(*args, env=cli_env, preexec_fn=small_disk)
    assert full.returncode == 74, full.stderr
    assert f"cannot write {out}: File too large; the previous r.csv is unchanged" in full.stderr
    assert (out.read_bytes(), out.with_name("r_summary.csv").read_bytes()) == before
    # Nothing half-written is left beside the outputs of the first run (no temporary files).
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "r.csv",
        "r.csv.state",
        "r_report.html",
        "r_summary.csv",
        "r_timeline.csv",
        "r_tracks.csv",
    ]

    after = run(*args, env=cli_env)  # space is back: finish without analysing v3 again
    assert after.returncode == 0, after.stderr
    assert (last_plan(out)["analysed"], last_plan(out)["kept"]) == (0, 4)
    rows = pd.read_csv(out)
    assert rows["source"].value_counts().to_dict() == {f"v{i}.mp4": 100 for i in range(4)}
    assert out.read_bytes().startswith(before[0])  # the same rows, plus the new file's


# --- the inspection step on its own -------------------------------------------------------------------------------
def _encoded(ext: str, width: int, height: int) -> bytes:
    ok, data = cv2.imencode(ext, np.zeros((height, width, 3), np.uint8))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp", ".tiff"])
def test_image_size_is_read_from_the_header(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"a{ext}"
    path.write_bytes(_encoded(ext, 123, 45))
    head = path.read_bytes()[:65536]
    with open(path, "rb") as fh:
        assert image_size(fh, sniff(head)) == (123, 45)


def test_jpeg_size_is_found_after_a_large_exif_block(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010E] = "x" * 60000  # ImageDescription: pushes the frame header past the first 60 KB
    buf = io.BytesIO()
    Image.new("RGB", (77, 33)).save(buf, "JPEG", exif=exif)
    path = tmp_path / "big-exif.jpg"
    path.write_bytes(buf.getvalue())
    with open(path, "rb") as fh:
        assert image_size(fh, "JPEG") == (77, 33)


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(_encoded(".png", 200, 100))
    assert inspect(path, "image", max_pixels=20_000).media_type == "image"
    with pytest.raises(FileProblem, match="200x100 = 0 megapixels, above the limit of 0.019999"):
        inspect(path, "image", max_pixels=19_999)


def test_mp4_structure(tmp_path: Path) -> None:
    video = write_moving_face_video(tmp_path / "v.mp4", seconds=0.4).path
    data = video.read_bytes()
    with open(video, "rb") as fh:
        assert iso_structure_problem(fh, len(data)) is None
    cut = tmp_path / "cut.mp4"
    moov = data.rindex(b"moov") - 4
    cut.write_bytes(data[:moov])  # the index is gone, every box is complete
    with open(cut, "rb") as fh:
        assert "no 'moov' index" in iso_structure_problem(fh, moov)
    garbage = tmp_path / "g.mp4"
    second = struct.unpack(">I", data[:4])[0]  # where the box after 'ftyp' starts
    garbage.write_bytes(data[:second] + struct.pack(">I", 3) + b"free" + data[second + 8 :])
    with open(garbage, "rb") as fh:
        assert "impossible size" in iso_structure_problem(fh, len(data))


def test_identity_is_size_mtime_and_sha256(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "a.jpg"
    path.write_bytes(_encoded(".jpg", 10, 10))
    identity = inspect(path, "image").identity
    info = path.stat()
    assert (identity.size, identity.mtime_ns) == (info.st_size, info.st_mtime_ns)
    assert identity.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("name", "alias"),
    [("plain_name-1.mp4", False), ("café.mp4", True), ("a %d.mp4", True), (os.fsdecode(b"\xe9.mp4"), True)],
)
def test_videos_with_risky_names_are_opened_through_a_private_ascii_alias(
    tmp_path: Path, name: str, alias: bool
) -> None:
    path = tmp_path / name
    path.write_bytes(b"video")
    assert needs_safe_alias(path) is alias
    with decoder_path(path) as usable:
        assert str(usable).isascii() and usable.read_bytes() == b"video"
        if alias:
            assert usable.is_symlink() and (usable.parent.stat().st_mode & 0o077) == 0
            folder = usable.parent
    if alias:
        assert not folder.exists(), "the alias and its folder are removed afterwards"
