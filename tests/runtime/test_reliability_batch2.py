"""Issue #14, "Cron-grade, round two": real files through the real command (a subprocess).

Each finding gives a clear per-file error or a correct result, never a traceback, and no earlier result is removed
because of a transient problem (a folder that cannot be read now, another input root, an empty mount point).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from emotion_batch.batch.incremental import chart_name
from emotion_batch.output.thumbnails import thumbnail_filename

from .cli_runs import last_plan, permission_respecting_preexec, run, start, summary_of

pytestmark = pytest.mark.slow

EXIT_INTERRUPTED, EXIT_NO_INPUT = 130, 66


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_csv(out)


def _no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# --- 1. names too long for a chart file, and 3. names that flatten alike -----------------------------------------
def test_long_and_colliding_names_get_their_own_charts(tmp_path: Path, moving_face_video, cli_env,
                                                       model_args) -> None:  # fmt: skip
    root = tmp_path / "in"
    japanese = root / ("動画" * 38 + ".mp4")  # 76 characters, 228 bytes of UTF-8 before the extension
    deep = root.joinpath(*[f"d{i:02d}" for i in range(40)]) / "clip.mp4"  # 40 folders deep
    deep.parent.mkdir(parents=True)
    for target in (japanese, deep, root / "clip 1.mp4", root / "clip_1.mp4"):
        shutil.copy(moving_face_video.path, target)
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    args = (root, "--out", out, "--workers", "1", "--max-frames", "4", *model_args)
    result = run(*args, env=cli_env)
    assert result.returncode == 0, result.stderr
    _no_traceback(result)
    summary = summary_of(out)
    sources = [
        japanese.relative_to(root).as_posix(),
        deep.relative_to(root).as_posix(),
        "clip 1.mp4",
        "clip_1.mp4",
    ]
    assert (summary.loc[sources, "status"] == "ok").all()
    assert set(_rows(out)["source"]) == set(sources)
    charts = out.with_name("r_charts")
    names = [chart_name(s) for s in sources]
    assert len(set(names)) == 4  # "clip 1" and "clip_1" do not share a chart
    for name in names:
        assert len(name.encode()) <= 255
        assert (charts / name).is_file(), sorted(p.name for p in charts.iterdir())
    # Every rerun works too (the crash used to repeat), with nothing to do.
    again = run(*args, env=cli_env)
    assert again.returncode == 0, again.stderr
    assert last_plan(out)["kept"] == 4


def test_an_exception_while_committing_one_file_fails_that_file_only(tmp_path: Path, astronaut_jpg: Path, cli_env,
                                                                     model_args) -> None:  # fmt: skip
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(astronaut_jpg, root / "a.jpg")
    shutil.copy(astronaut_jpg, root / "b.jpg")
    out = tmp_path / "out" / "r.csv"
    charts = out.with_name("r_charts")
    # b.jpg's thumbnail cannot be saved: folders stand where its file would go (a real OSError in the commit).
    for shot in (None, 0):
        for track in (0, 1):
            (charts / thumbnail_filename("b.jpg", shot, track) / "x").mkdir(parents=True)
    result = run(root, "--out", out, "--workers", "1", *model_args, env=cli_env)
    assert result.returncode == 1, result.stderr
    _no_traceback(result)
    summary = summary_of(out)
    assert summary.loc["a.jpg", "status"] == "ok"
    assert summary.loc["b.jpg", "status"] == "error"
    assert summary.loc["b.jpg", "error_kind"] == "internal"
    assert "could not be saved" in summary.loc["b.jpg", "error"]
    assert set(_rows(out)["source"]) == {"a.jpg"}
    # Fixed: the next run retries it.
    shutil.rmtree(charts)
    result = run(root, "--out", out, "--workers", "1", *model_args, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert last_plan(out)["reasons"] == {"failed before, retried": 1}


# --- 2. a folder (or file) that cannot be read now keeps its earlier results ---------------------------------------
def test_a_folder_unreadable_between_runs_keeps_its_results(tmp_path: Path, astronaut_jpg: Path, cli_env,
                                                            model_args) -> None:  # fmt: skip
    preexec = permission_respecting_preexec()
    root = tmp_path / "in"
    for folder in ("ok", "locked", "nosearch"):
        (root / folder).mkdir(parents=True)
        shutil.copy(astronaut_jpg, root / folder / "face.jpg")
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    args = (root, "--out", out, "--no-charts", "--workers", "1", *model_args)
    first = run(*args, env=cli_env, preexec_fn=preexec)
    assert first.returncode == 0, first.stderr
    rows_before = _rows(out)
    try:
        (root / "locked").chmod(0o000)  # cannot be listed: the walker reports the folder
        (root / "nosearch").chmod(0o644)  # listed, but its file cannot be looked at (stat: EACCES)
        second = run(*args, env=cli_env, preexec_fn=preexec)
        _no_traceback(second)
        assert second.returncode == 1, second.stderr  # the unlistable folder is an error row
        summary = summary_of(out)
        for source in ("ok/face.jpg", "locked/face.jpg", "nosearch/face.jpg"):
            assert summary.loc[source, "status"] == "ok", source
        assert summary.loc["locked/", "status"] == "error"
        pd.testing.assert_frame_equal(_rows(out), rows_before)
        recorded = last_plan(out)
        assert recorded["kept_unlisted"] == 1 and recorded["kept_unreadable"] == 1
        assert "keep their earlier results" in second.stderr
    finally:
        (root / "locked").chmod(0o755)
        (root / "nosearch").chmod(0o755)
    third = run(*args, env=cli_env, preexec_fn=preexec)
    assert third.returncode == 0, third.stderr
    assert last_plan(out)["kept"] == 3
    pd.testing.assert_frame_equal(_rows(out), rows_before)
    assert "locked/" not in summary_of(out).index


# --- 4. and 5. output formats checked before any work -------------------------------------------------------------
@pytest.mark.parametrize("name", ["results.xlsx", "results"])
def test_an_unsupported_out_extension_is_a_usage_error(tmp_path: Path, astronaut_jpg: Path, cli_env,
                                                       name: str) -> None:  # fmt: skip
    out = tmp_path / name
    result = run(astronaut_jpg, "--out", out, env=cli_env)
    assert result.returncode == 2, result.stderr
    _no_traceback(result)
    assert ".csv" in result.stderr and ".parquet" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_parquet_without_pyarrow_is_refused_up_front(tmp_path: Path, astronaut_jpg: Path, cli_env) -> None:
    stub = tmp_path / "stub" / "pyarrow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('No module named pyarrow (hidden by the test)')\n")
    out = tmp_path / "out" / "results.parquet"
    out.parent.mkdir()
    env = {**cli_env, "PYTHONPATH": str(stub.parent)}
    started = time.monotonic()
    result = run(astronaut_jpg, "--out", out, env=env)
    assert result.returncode == 2, result.stderr
    _no_traceback(result)
    assert "pyarrow" in result.stderr and "parquet extra" in result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == []  # no temporary file, no state folder
    assert time.monotonic() - started < 60


# --- 6. a signal at the very start ---------------------------------------------------------------------------------
def _catches_sigterm(pid: int) -> bool:
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("when", ["first-handler", "0.7s"])
def test_a_signal_right_after_start_exits_interrupted(tmp_path: Path, astronaut_jpg: Path, cli_env, model_args,
                                                      sig: signal.Signals, when: str) -> None:  # fmt: skip
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    proc = start(astronaut_jpg, "--out", out, "--workers", "1", *model_args, env=cli_env)
    deadline = time.monotonic() + 30
    if when == "first-handler":  # as soon as the command's own code runs (its handlers are in place)
        while not _catches_sigterm(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.001)
    else:
        time.sleep(float(when.rstrip("s")))
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=120)
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    if when != "first-handler" and "the outputs were completed first" in stderr:
        # One photo can be done within 0.7 s on a fast hour: the signal then came while the finished outputs
        # were being written, and a complete run is a success, not an interruption.
        assert proc.returncode == 0, stderr
        assert out.exists()
        return
    if when != "first-handler" and f"results in {out}" in (stderr.strip().splitlines() or [""])[-1]:
        # On a faster CPU the run can be over before 0.7 s: its last line says where the results are, and the
        # signal came while Python was shutting down, where it ends the process as the default action does
        # (or not at all, when it came after the exit status was set). The outputs are complete either way.
        assert proc.returncode in (0, -sig), stderr
        assert out.exists()
        return
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "interrupted" in stderr.lower()
    assert not out.exists()


# --- 7. no media files at all ---------------------------------------------------------------------------------------
def test_no_media_files_exits_66_and_keeps_the_results(tmp_path: Path, astronaut_jpg: Path, cli_env,
                                                       model_args) -> None:  # fmt: skip
    share = tmp_path / "share"
    share.mkdir()
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    args = (share, "--out", out, "--no-charts", "--workers", "1", *model_args)
    empty = run(*args, env=cli_env)
    assert empty.returncode == EXIT_NO_INPUT, empty.stderr
    _no_traceback(empty)
    assert "no media files found" in empty.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == []
    # A share that had files, then is not mounted (an empty mount point): nothing changes.
    shutil.copy(astronaut_jpg, share / "face.jpg")
    assert run(*args, env=cli_env).returncode == 0
    before = (out.read_bytes(), summary_of(out))
    (share / "face.jpg").unlink()
    (share / "notes.txt").write_text("not media\n")
    unmounted = run(*args, env=cli_env)
    assert unmounted.returncode == EXIT_NO_INPUT, unmounted.stderr
    assert out.read_bytes() == before[0]
    pd.testing.assert_frame_equal(summary_of(out), before[1])


# --- 8. another input root for the same --out -----------------------------------------------------------------------
def test_another_input_root_keeps_the_earlier_rows(tmp_path: Path, astronaut_jpg: Path, cli_env,
                                                   model_args) -> None:  # fmt: skip
    first_root, second_root = tmp_path / "monday", tmp_path / "tuesday"
    first_root.mkdir()
    second_root.mkdir()
    shutil.copy(astronaut_jpg, first_root / "mon.jpg")
    shutil.copy(astronaut_jpg, second_root / "tue.jpg")
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    common = ("--out", out, "--no-charts", "--workers", "1", *model_args)
    assert run(first_root, *common, env=cli_env).returncode == 0
    result = run(second_root, *common, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "outside this run's inputs" in result.stderr and str(first_root) in result.stderr
    assert set(summary_of(out).index) == {"mon.jpg", "tue.jpg"}
    assert set(_rows(out)["source"]) == {"mon.jpg", "tue.jpg"}
    assert last_plan(out) == {"analysed": 1, "reasons": {"new": 1}, "kept": 0, "skipped": 0,
                              "kept_outside_inputs": 1}  # fmt: skip
    # A file of the earlier root that is really gone is forgotten.
    (first_root / "mon.jpg").unlink()
    assert run(second_root, *common, env=cli_env).returncode == 0
    assert set(summary_of(out).index) == {"tue.jpg"}
