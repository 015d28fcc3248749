"""Nightly behaviour of the real command: incremental reruns, settings changes, the lock, signals, bad workers."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest

from .cli_runs import (
    comparable_summary,
    last_plan,
    plan,
    run,
    sigkill,
    start,
    summary_of,
    wait_for_line,
    wait_for_lock_holder,
    worker_with_open_file,
)
from .media_factory import no_face_bgr, write_moving_face_video

pytestmark = pytest.mark.slow


@pytest.fixture
def folder(tmp_path: Path, astronaut_jpg: Path, moving_face_video) -> Path:
    root = tmp_path / "inputs"
    (root / "clips").mkdir(parents=True)
    shutil.copy(astronaut_jpg, root / "astronaut.jpg")
    shutil.copy(moving_face_video.path, root / "clips" / "moving_face.mp4")
    cv2.imwrite(str(root / "rocket.png"), no_face_bgr())
    (root / "notes.txt").write_text("not media\n")
    return root


def fresh_run(folder: Path, tmp_path: Path, env: dict, *args: str) -> Path:
    """An uninterrupted run into a new output folder: the reference any incremental history must match."""
    out = Path(tmp_path, f"fresh-{time.monotonic_ns()}", "r.csv")
    out.parent.mkdir()
    result = run(folder, "--out", out, *args, env=env)
    assert result.returncode in (0, 1), result.stderr
    return out


def test_reruns_do_only_new_work_and_match_a_fresh_run(
    folder: Path, tmp_path: Path, cli_env, model_args
) -> None:
    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    args = [folder, "--out", out, "--no-charts", *model_args]

    first = run(*args, env=cli_env)
    assert first.returncode == 0, first.stderr
    assert last_plan(out) == plan(3, skipped=1, new=3)
    stamp = out.stat().st_mtime_ns, out.read_bytes()

    again = run(*args, env=cli_env)
    assert last_plan(out) == plan(0, kept=3, skipped=1)
    assert "(already up to date)" in again.stderr
    assert (out.stat().st_mtime_ns, out.read_bytes()) == stamp, "an up-to-date output is not even rewritten"

    shutil.copy(folder / "astronaut.jpg", folder / "zz_new.jpg")
    assert run(*args, env=cli_env).returncode == 0
    assert last_plan(out) == plan(1, kept=3, skipped=1, new=1)
    assert pd.read_csv(out)["source"].iloc[-1] == "zz_new.jpg"

    later = time.time() + 100
    os.utime(folder / "astronaut.jpg", (later, later))  # touched, same content: compared by sha256, kept
    assert run(*args, env=cli_env).returncode == 0
    assert last_plan(out) == plan(0, kept=4, skipped=1)

    shutil.copy(folder / "astronaut.jpg", folder / "rocket.png")  # new content under an old name
    assert run(*args, env=cli_env).returncode == 0
    assert last_plan(out) == plan(1, kept=3, skipped=1, changed=1)
    assert summary_of(out).loc["rocket.png", "faces"] == 1

    (folder / "zz_new.jpg").unlink()
    gone = run(*args, env=cli_env)
    assert "zz_new.jpg" not in set(pd.read_csv(out)["source"])

    reference = fresh_run(folder, tmp_path, cli_env, "--no-charts", *model_args)
    assert out.read_bytes() == reference.read_bytes()
    pd.testing.assert_frame_equal(comparable_summary(out), comparable_summary(reference))
    assert gone.returncode == 0
    shards = list((out.parent / "r.csv.state" / "shards").iterdir())
    assert len(shards) == 3, "shards of replaced or deleted files are removed"


def test_missing_charts_are_redrawn_without_analysing_again(
    folder: Path, tmp_path: Path, cli_env, model_args
) -> None:
    out = tmp_path / "r.csv"
    assert run(folder, "--out", out, *model_args, env=cli_env).returncode == 0
    charts = tmp_path / "r_charts"
    expected = sorted(p.name for p in charts.iterdir())
    assert [name for name in expected if not name.endswith(".jpg")] == [  # .jpg: the track thumbnails
        "clips__moving_face.mp4.timeline.png",
        "overview.png",
    ]
    shutil.rmtree(charts)
    assert run(folder, "--out", out, *model_args, env=cli_env).returncode == 0
    assert last_plan(out)["analysed"] == 0
    assert sorted(p.name for p in charts.iterdir()) == expected


def test_changed_settings_are_refused_with_the_difference_then_force_redoes_everything(
    folder: Path, tmp_path: Path, cli_env, model_args
) -> None:
    out = tmp_path / "r.csv"
    assert run(folder, "--out", out, *model_args, env=cli_env).returncode == 0
    before = out.read_bytes()

    refused = run(folder, "--out", out, "--fps", "4", "--min-face", "30", *model_args, env=cli_env)
    assert refused.returncode == 2
    assert (
        "holds rows made with other settings (detector.min_face 20 -> 30, sampling.fps unset -> 4.0, "
        "sampling.rate 2.0 -> 4.0)"
    ) in refused.stderr
    assert "Rerun with --force" in refused.stderr and "nothing was done" in refused.stderr
    assert out.read_bytes() == before

    forced = run(folder, "--out", out, "--fps", "4", "--min-face", "30", "--force", *model_args, env=cli_env)
    assert forced.returncode == 0, forced.stderr
    assert last_plan(out) == plan(3, skipped=1, new=3)
    assert (pd.read_csv(out)["source"] == "clips/moving_face.mp4").sum() == 16  # 4 samples/s over 4 s
    reference = fresh_run(folder, tmp_path, cli_env, "--fps", "4", "--min-face", "30", *model_args)
    assert out.read_bytes() == reference.read_bytes()

    assert (
        run(folder, "--out", out, "--fps", "4", "--min-face", "30", *model_args, env=cli_env).returncode == 0
    )
    assert last_plan(out) == plan(0, kept=3, skipped=1)


def test_a_different_model_is_refused(folder: Path, tmp_path: Path, cli_env, tiny_model: Path) -> None:
    out = tmp_path / "r.csv"
    assert run(folder, "--out", out, "--no-charts", env=cli_env).returncode == 0
    refused = run(folder, "--out", out, "--no-charts", "--model", tiny_model, env=cli_env)
    assert refused.returncode == 2
    assert "holds rows made with other settings (model.crop.offset_x" in refused.stderr
    assert "model.sha256 " in refused.stderr and "model.labels" in refused.stderr


def test_a_second_run_on_the_same_output_exits_75_at_once(
    folder: Path, tmp_path: Path, cli_env, model_args
) -> None:
    out = tmp_path / "r.csv"
    first = start(folder, "--out", out, "--every", "1", *model_args, env=cli_env)
    try:
        holder = wait_for_lock_holder(out)
        assert holder == first.pid
        os.kill(first.pid, signal.SIGSTOP)  # keep it holding the lock, mid-run
        started = time.monotonic()
        second = run(folder, "--out", out, *model_args, env=cli_env)
        assert second.returncode == 75
        assert time.monotonic() - started < 30
        assert (
            f"another emotion-batch run is already writing this output (pid {first.pid} on " in second.stderr
        )
        assert "Exiting without doing anything (exit code 75)" in second.stderr
        assert not out.exists()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert summary_of(out)["status"].value_counts().to_dict() == {"ok": 3, "skipped": 1}


def test_a_stale_lock_from_a_killed_run_does_not_block_the_next_night(
    folder: Path, tmp_path: Path, cli_env, model_args
) -> None:
    out = tmp_path / "r.csv"
    killed = start(folder, "--out", out, "--every", "1", *model_args, env=cli_env)
    wait_for_lock_holder(out)
    sigkill(killed)
    nightly = run(folder, "--out", out, *model_args, env=cli_env)
    assert nightly.returncode == 0, nightly.stderr
    assert f"(pid {killed.pid} on " in nightly.stderr and "did not finish (killed?)" in nightly.stderr


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stop_signal_finishes_the_files_in_flight_and_the_rerun_completes(
    tmp_path: Path, moving_face_video, cli_env, model_args, how: str
) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(5):
        shutil.copy(moving_face_video.path, folder / f"clip{i}.mp4")
    args = ["--every", "2", "--workers", "1", "--no-charts", *model_args]
    reference = fresh_run(folder, tmp_path, cli_env, *args)

    out = tmp_path / "out" / "r.csv"
    out.parent.mkdir()
    proc = start(folder, "--out", out, *args, env=cli_env, new_session=True)
    lines = wait_for_line(proc, "[1/5] ok")
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group, workers too
    else:
        os.kill(proc.pid, signal.SIGTERM)  # what cron, systemd or docker stop do
    _, rest = proc.communicate(timeout=300)
    log = "".join(lines) + rest
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    assert proc.returncode == 130, log
    assert f"{name} received: finishing the file(s) being analysed, then stopping" in log
    assert "Run the same command again to continue" in log
    assert not out.exists(), "an interrupted run leaves the (here: absent) previous results untouched"
    assert "error" not in log.lower(), "the file in flight finished normally"
    done = int(log.split(f"interrupted by {name}: ")[1].split(" file(s) finished")[0])
    assert 2 <= done < 5, "the file in flight when the signal came was finished, the rest not started"

    rerun = run(folder, "--out", out, *args, env=cli_env)
    assert rerun.returncode == 0, rerun.stderr
    assert last_plan(out) == plan(5 - done, kept=done, new=5 - done)
    assert out.read_bytes() == reference.read_bytes()


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough (10 s, analysed frame by frame) for a test to catch its worker in the act on any machine."""
    return write_moving_face_video(tmp_path_factory.mktemp("long") / "long.mp4", seconds=10).path


@pytest.fixture
def long_and_short(tmp_path: Path, long_video: Path, astronaut_jpg: Path) -> Path:
    root = tmp_path / "inputs"
    root.mkdir()
    shutil.copy(long_video, root / "a_long.mp4")
    shutil.copy(astronaut_jpg, root / "b_photo.jpg")
    return root


def test_a_decoder_crash_costs_one_file_and_the_run_goes_on(
    long_and_short: Path, tmp_path: Path, cli_env, model_args
) -> None:
    out = tmp_path / "r.csv"
    args = [long_and_short, "--out", out, "--every", "1", "--workers", "1", "--no-charts", *model_args]
    proc = start(*args, env=cli_env)
    worker = worker_with_open_file(proc.pid, "a_long.mp4")
    os.kill(worker, signal.SIGSEGV)  # what a crashing native decoder does to its process
    _, log = proc.communicate(timeout=300)
    assert proc.returncode == 1, log
    summary = summary_of(out)
    assert summary.loc["a_long.mp4", "error_kind"] == "crashed"
    assert summary.loc["a_long.mp4", "error"] == (
        "the worker process killed by signal SIGSEGV (11) while analysing this file"
    )
    assert summary.loc["b_photo.jpg", "status"] == "ok"
    assert "a_long.mp4: the worker process killed by signal SIGSEGV" in log

    retry = run(*args, env=cli_env)
    assert retry.returncode == 0 and last_plan(out) == plan(1, kept=1, **{"failed before, retried": 1})


def test_a_hanging_file_is_stopped_by_file_timeout(
    long_and_short: Path, tmp_path: Path, cli_env, model_args
) -> None:
    out = tmp_path / "r.csv"
    args = [long_and_short, "--out", out, "--every", "1", "--workers", "1", "--no-charts", *model_args]
    proc = start(*args, "--file-timeout", "8", env=cli_env)
    worker = worker_with_open_file(proc.pid, "a_long.mp4")
    os.kill(worker, signal.SIGSTOP)  # a decoder stuck for good
    started = time.monotonic()
    _, log = proc.communicate(timeout=300)
    assert proc.returncode == 1, log
    assert time.monotonic() - started < 120
    summary = summary_of(out)
    assert summary.loc["a_long.mp4", "error_kind"] == "timeout"
    assert (
        summary.loc["a_long.mp4", "error"] == "no result after 8 s (--file-timeout); the worker was stopped"
    )
    assert summary.loc["b_photo.jpg", "status"] == "ok"
