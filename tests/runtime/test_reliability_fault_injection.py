"""Fault injection: SIGKILL a real `emotion-batch` run at random points, rerun to completion, compare.

The folder holds real media: the generated moving-face video, photos with and without a face, a fake video, a
text file and, when the shared data is present, real videos and photos from ../shared/media. The output already
holds an older version of the results (an earlier run over the photos only), so the test also watches that an
existing results file is never seen half-written: after every kill, --out and the summary must each be exactly
the old version or exactly the final one.

Kill points are drawn at random (seed printed; set EMOTION_BATCH_FAULT_SEED to replay): during start-up, in the
middle of the analysis (after a random number of finished files plus a random delay, so inside a file, between
the shard and the state record, or between files), and at the end (assembly of the outputs and the charts).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest

from .cli_runs import alive, comparable_summary, descendants, run, start
from .environment import SHARED
from .media_factory import no_face_bgr

pytestmark = pytest.mark.slow

SHARED_VIDEOS = ("facerec_short_hamilton_clip.mp4", "pyfeat_single_face.mp4")
SHARED_PHOTOS = ("deepface_couple.jpg", "facenetpytorch_multiface.jpg", "fer_no-faces_NEGATIVE.jpg")
KILLS = 6
PLANNED = re.compile(r"analysing (\d+) file\(s\)")
DONE = re.compile(r"\[(\d+)/(\d+)\]")


@pytest.fixture(scope="module")
def media_folder(tmp_path_factory: pytest.TempPathFactory, astronaut_jpg: Path, moving_face_video) -> Path:
    root = tmp_path_factory.mktemp("fault") / "media"
    (root / "videos").mkdir(parents=True)
    (root / "photos").mkdir()
    shutil.copy(moving_face_video.path, root / "videos" / "moving_face.mp4")
    shutil.copy(astronaut_jpg, root / "photos" / "astronaut.jpg")
    cv2.imwrite(str(root / "photos" / "rocket_no_face.png"), no_face_bgr())
    (root / "videos" / "not_a_video.mp4").write_text("text, not a video\n")
    (root / "notes.txt").write_text("field notes\n")
    shared = SHARED / "media"
    if shared.is_dir():
        for name in SHARED_VIDEOS:
            shutil.copy(shared / "videos" / name, root / "videos" / name)
        for name in SHARED_PHOTOS:
            shutil.copy(shared / "photos" / name, root / "photos" / name)
    return root


def _kill_point(proc, rng: random.Random, log: list[str]) -> str:
    """Read the run's log until a randomly chosen moment; return a description of it."""
    phase = rng.choice(["startup", "middle", "middle", "end"])
    if phase == "startup":
        delay = rng.uniform(0.0, 3.0)
        time.sleep(delay)
        return f"startup +{delay:.2f}s"
    planned = None
    while planned is None:
        line = proc.stderr.readline()
        if not line:
            return "ended by itself"
        log.append(line)
        if match := PLANNED.search(line):
            planned = int(match.group(1))
    # "middle": inside the first file (target 0) or after a random number of finished files.
    target = planned if phase == "end" or planned == 0 else rng.randint(0, planned - 1)
    finished = 0
    while finished < target:
        line = proc.stderr.readline()
        if not line:
            return "ended by itself"
        log.append(line)
        if match := DONE.search(line):
            finished = int(match.group(1))
    delay = rng.uniform(0.0, 0.5 if phase == "end" else 1.2)
    time.sleep(delay)
    return f"{phase}: after {finished}/{planned} file(s) +{delay:.2f}s"


def _summary_is_whole(summary: Path, older: bytes, reference: pd.DataFrame) -> bool:
    """The summary is the older file, or a complete final one (its timings depend on which run did a file)."""
    data = summary.read_bytes()
    if data == older:
        return True
    now = pd.read_csv(summary).set_index("source").drop(columns=["elapsed_s"])
    return now.equals(reference)


def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_results(
    media_folder: Path, tmp_path: Path, cli_env, model_args
) -> None:
    seed = int(os.environ.get("EMOTION_BATCH_FAULT_SEED", time.time_ns() % 1_000_000))
    try:
        _kill_and_rerun(media_folder, tmp_path, cli_env, model_args, seed)
    except AssertionError as exc:  # every failure names the seed that replays it
        raise AssertionError(
            f"{exc}\n[fault injection seed {seed}: EMOTION_BATCH_FAULT_SEED={seed} replays it]"
        ) from exc


def _kill_and_rerun(media_folder: Path, tmp_path: Path, cli_env, model_args, seed: int) -> None:
    rng = random.Random(seed)
    common = ["--workers", "2", *model_args]

    # The reference: one uninterrupted run.
    reference = tmp_path / "reference" / "r.csv"
    reference.parent.mkdir()
    started = time.monotonic()
    baseline = run(media_folder, "--out", reference, *common, env=cli_env)
    baseline_s = time.monotonic() - started
    assert baseline.returncode == 1, baseline.stderr  # the fake video fails, everything else is ok

    # An output holding an older version: the photos only.
    out = tmp_path / "killed" / "r.csv"
    out.parent.mkdir()
    summary = out.with_name("r_summary.csv")
    older = run(media_folder, "--out", out, "--exclude", "videos/*", *common, env=cli_env)
    assert older.returncode == 0, older.stderr
    old_out, old_summary = out.read_bytes(), summary.read_bytes()
    final_out, reference_summary = reference.read_bytes(), comparable_summary(reference)

    landed: list[str] = []
    attempts = 0
    while len(landed) < KILLS and attempts < 3 * KILLS:
        attempts += 1
        proc = start(media_folder, "--out", out, *common, env=cli_env)
        log: list[str] = []
        where = _kill_point(proc, rng, log)
        workers = descendants(proc.pid)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
            landed.append(where)
        proc.wait()
        proc.stderr.close()
        # Never half-written: each output is the older version or the final one.
        assert out.read_bytes() in (old_out, final_out), f"--out damaged by a kill at {where}"
        assert _summary_is_whole(summary, old_summary, reference_summary), f"summary damaged at {where}"
        # Workers die with their parent: nothing keeps decoding in the background.
        deadline = time.monotonic() + 10
        while alive(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert alive(workers) == [], f"orphaned workers after a kill at {where}"
        if not killed and out.read_bytes() == final_out:
            # The run finished first, so every later run would find nothing left to do (and nothing to kill):
            # start again from the older version.
            shutil.rmtree(out.parent)
            out.parent.mkdir()
            again = run(media_folder, "--out", out, "--exclude", "videos/*", *common, env=cli_env)
            assert again.returncode == 0, again.stderr
            assert out.read_bytes() == old_out  # the rows are deterministic
            old_summary = summary.read_bytes()  # its timings are not

    final = run(media_folder, "--out", out, *common, env=cli_env)
    assert final.returncode == 1, final.stderr

    rows_a, rows_b = pd.read_csv(reference), pd.read_csv(out)
    same = (rows_a == rows_b) | (rows_a.isna() & rows_b.isna())
    differences = int((~same).sum().sum()) if rows_a.shape == rows_b.shape else -1
    print(
        f"\nfault injection (seed {seed}): {attempts} runs started, {len(landed)} SIGKILLs landed "
        f"[{'; '.join(landed)}]; final CSV {len(rows_b)} rows x {rows_b.shape[1]} columns compared with an "
        f"uninterrupted run ({len(rows_a)} rows, {baseline_s:.1f} s): {differences} differing cells, "
        f"byte-identical: {out.read_bytes() == final_out}"
    )
    assert len(landed) >= KILLS - 1, f"too few kills landed: {landed}"
    assert out.read_bytes() == final_out, "the final CSV differs from an uninterrupted run's"
    assert differences == 0
    pd.testing.assert_frame_equal(comparable_summary(out), reference_summary)
    assert sorted(p.name for p in (out.parent / "r_charts").iterdir()) == sorted(
        p.name for p in (reference.parent / "r_charts").iterdir()
    )
    # No litter: no temporary files, no orphan shards.
    leftovers = [p for p in out.parent.rglob("*") if p.name.endswith((".tmp", ".tmp.png"))]
    assert leftovers == []
    shards = list((out.parent / "r.csv.state" / "shards").iterdir())
    assert len(shards) == int((comparable_summary(out)["status"] == "ok").sum())
