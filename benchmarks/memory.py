#!/usr/bin/env python
"""Memory flatness: peak RSS of `emotion-batch` on a 1-minute and a 10-minute 720p video made from one real clip.

Frames and rows must stream through the pipeline, so a video ten times longer may not need noticeably more
memory: the target is at most 20% growth in peak RSS. The two videos are written with cv2.VideoWriter (mp4v,
1280x720, `--video-fps` frames per second) by repeating a real clip from the shared media folder, each is
analysed by the real command in a fresh process (CSV, summary and charts written, default workers), and the
peak RSS of that process tree is sampled every 50 ms. The videos live in a temporary folder that is deleted
afterwards (the 10-minute one takes a few hundred MB while it exists).

With `--state-files N` it measures the other axis instead: a state store of N files (issue #14: 100,000). N
small face photos (FER2013 crops at `--size` px, see `many_files.write_photos`) are analysed once by the real
command; then the nightly cases are timed with their peak RSS: a rerun with nothing to do, and a rerun after
one new photo was added (its outputs, the tables and the report are rebuilt from the state store). The first
run takes a while (about 140 files/s on 2 cores); `--keep DIR` keeps the photos and the state for repeats.

Usage:
    python benchmarks/memory.py                          # clip: shared/media/videos/petercunha_dinner.mp4
    python benchmarks/memory.py --clip some.mp4 --minutes 1 10 --fps 2
    python benchmarks/memory.py --state-files 100000 --keep /tmp/state100k
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import SHARED, YUNET_IN_SHARED, require_psutil, with_peak_rss

SIZE = (1280, 720)


def write_repeated(clip: Path, out: Path, seconds: float, fps: float) -> int:
    """Write `seconds` of 720p video at `fps` by playing `clip`'s frames over and over; return frames written."""
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {out} with the mp4v codec")
    total, written = round(seconds * fps), 0
    try:
        while written < total:
            cap = cv2.VideoCapture(str(clip))
            while written < total:
                ok, frame = cap.read()
                if not ok:
                    break
                writer.write(cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA))
                written += 1
            cap.release()
            if written == 0:
                raise RuntimeError(f"no frames in {clip}")
    finally:
        writer.release()
    return written


def emotion_batch_command() -> list[str]:
    exe = shutil.which("emotion-batch")
    return [exe] if exe else [sys.executable, "-m", "emotion_batch"]


def timed(command: list[str], ok: tuple[int, ...] = (0, 1)) -> tuple[float, int, str]:
    """(wall s, peak tree RSS bytes, stderr) of one command in a fresh process, with the shared detector; an exit
    code outside `ok` (default 0, and 1: some files failed, which a big folder may have) is an error."""
    env = dict(os.environ)
    if "EMOTION_BATCH_DETECTOR_MODEL" not in env and YUNET_IN_SHARED.is_file():
        env["EMOTION_BATCH_DETECTOR_MODEL"] = str(YUNET_IN_SHARED)
    started = time.perf_counter()
    done, peak = with_peak_rss(
        lambda: subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    )
    wall = time.perf_counter() - started
    if done.returncode not in ok:
        raise RuntimeError(f"emotion-batch failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, peak, done.stderr


def analyse(video: Path, workdir: Path, args: argparse.Namespace) -> tuple[float, int, int]:
    """(wall s, peak tree RSS bytes, CSV rows) of one `emotion-batch` run on `video` in a fresh process."""
    out = workdir / f"{video.stem}.csv"
    command = [*emotion_batch_command(), str(video), "--out", str(out), "--fps", str(args.fps), "--quiet"]
    if args.workers:
        command += ["--workers", str(args.workers)]
    wall, peak, _ = timed(command, ok=(0,))
    with open(out, encoding="utf-8") as fh:
        rows = sum(1 for _ in fh) - 1
    return wall, peak, rows


def state_store(args: argparse.Namespace, workdir: Path) -> int:
    """Time and peak RSS of the nightly reruns against a state store of `args.state_files` files."""
    from many_files import write_photos

    photos, out = workdir / "photos", workdir / "out" / "results.csv"
    subfolders = max(20, args.state_files // 1000)
    if not photos.is_dir() or sum(1 for _ in photos.rglob("face_*.jpg")) != args.state_files:
        shutil.rmtree(photos, ignore_errors=True)
        photos.mkdir(parents=True)
        started = time.perf_counter()
        write_photos(photos, args.state_files, args.size, subfolders)
        print(
            f"wrote {args.state_files} photos of {args.size}x{args.size} px in {time.perf_counter() - started:.0f} s"
        )
    command = [*emotion_batch_command(), str(photos), "--out", str(out), "--quiet"]
    if args.workers:
        command += ["--workers", str(args.workers)]
    extra = (
        photos / "zz_tonight" / "new.jpg"
    )  # sorts last, as dated recordings do: only the last overview page changes
    shutil.rmtree(extra.parent, ignore_errors=True)
    if not (out.with_name(out.name + ".state") / "state.sqlite3").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        wall, peak, _ = timed(command)
        print(f"  first run: {args.state_files} files in {wall:.0f} s ({args.state_files / wall:.0f} files/s); "
              f"peak RSS {peak / 2**20:.0f} MiB")  # fmt: skip
    wall, peak, _ = timed(
        command
    )  # settle: outputs as a finished run leaves them (a no-op after the first run)
    print(f"  rerun completing the outputs (a no-op after a finished first run): {wall:.2f} s; "
          f"peak RSS {peak / 2**20:.0f} MiB")  # fmt: skip
    wall, peak, _ = timed(command)
    print(f"  rerun with nothing to do: {wall:.2f} s; peak RSS {peak / 2**20:.0f} MiB")
    first = next(photos.rglob("face_*.jpg"))
    extra.parent.mkdir(exist_ok=True)
    shutil.copy(first, extra)
    try:
        wall, peak, _ = timed(command)
        print(f"  rerun after one new photo: {wall:.2f} s; peak RSS {peak / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(extra.parent, ignore_errors=True)
    state = out.with_name(out.name + ".state")
    size = sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
    print(f"  state folder: {size / 2**20:.0f} MiB ({state})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=SHARED / "media" / "videos" / "petercunha_dinner.mp4")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--video-fps", type=float, default=15.0, help="frame rate of the generated videos")
    parser.add_argument("--fps", type=float, default=2.0, help="samples per second (the product's default)")
    parser.add_argument("--workers", type=int, help="passed to emotion-batch (default: its own default)")
    parser.add_argument("--keep", type=Path, help="write the videos and results here and keep them")
    parser.add_argument(
        "--state-files", type=int, help="measure reruns against a state store of this many files"
    )
    parser.add_argument("--size", type=int, default=100, help="with --state-files: photo size in px")
    args = parser.parse_args(argv)
    require_psutil()
    if args.state_files:
        with tempfile.TemporaryDirectory(prefix="emotion-batch-state-") as tmp:
            print(f"state store of {args.state_files} files, {os.cpu_count()} CPU(s)")
            return state_store(args, args.keep or Path(tmp))
    if not args.clip.is_file():
        print(f"clip not found: {args.clip} (set EMOTION_BATCH_SHARED or pass --clip)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="emotion-batch-memory-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"clip {args.clip.name} repeated into {SIZE[0]}x{SIZE[1]} mp4v at {args.video_fps:g} fps; "
              f"emotion-batch --fps {args.fps:g}")  # fmt: skip
        peaks = []
        for minutes in args.minutes:
            video = workdir / f"repeated_{minutes:g}min.mp4"
            frames = write_repeated(args.clip, video, minutes * 60, args.video_fps)
            size_mb = video.stat().st_size / 1e6
            wall, peak, rows = analyse(video, workdir, args)
            peaks.append(peak)
            print(f"  {minutes:g} min: {frames} frames, {size_mb:.0f} MB; {rows} rows in {wall:.1f} s; "
                  f"peak RSS {peak / 2**20:.0f} MiB")  # fmt: skip
            if not args.keep:
                video.unlink()
    if len(peaks) >= 2:
        growth = peaks[-1] / peaks[0] - 1
        verdict = "within" if growth <= 0.20 else "OVER"
        print(
            f"  growth {args.minutes[0]:g} -> {args.minutes[-1]:g} min: {growth:+.1%} ({verdict} the 20% target)"
        )
        return 0 if growth <= 0.20 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
