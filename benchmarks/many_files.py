#!/usr/bin/env python
"""Many small files: files per second of `emotion-batch` on a folder of small face photos, and a no-op rerun.

The photos are real face crops (FER2013, 48x48 grey) upscaled to `--size` pixels and saved as JPEG, so each has
one face the detector finds, like a folder of profile pictures. The real command analyses them into a fresh
--out (CSV, summary, charts folder and report: the defaults), then runs again with nothing to do. Both runs are
timed from process start to exit; files/s counts the first run's files over its whole wall time (start-up
included). Target (issue #14, round two): >= 150 files/s on 2,000 photos of 200x200 px with 2 workers, and a
rerun with nothing to do in under 2 s.

Usage:
    python benchmarks/many_files.py                   # 2000 photos, 200x200, 2 workers
    python benchmarks/many_files.py --files 500 --workers 2 --keep /tmp/photos
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
from throughput import SHARED, YUNET_IN_SHARED

FER = SHARED / "datasets" / "fer2013"


def write_photos(folder: Path, count: int, size: int, subfolders: int = 20) -> int:
    """`count` JPEG photos of `size` x `size` px, each a FER2013 face crop upscaled (cubic), in `subfolders`
    sub-folders. More photos than crops reuse the crops, mirrored and with one pixel set from the photo's number,
    so that no two photos have the same content."""
    crops = sorted((FER / "test").glob("*/*.jpg"))
    if len(crops) < count:
        crops += sorted((FER / "train").glob("*/*.jpg"))
    if not crops:
        raise SystemExit(f"no face crops under {FER}")
    for i in range(count):
        grey = cv2.imread(str(crops[i % len(crops)]), cv2.IMREAD_GRAYSCALE)
        big = cv2.resize(grey, (size, size), interpolation=cv2.INTER_CUBIC)
        if i >= len(crops):
            big = cv2.flip(big, 1)
            big[0, 0], big[0, 1] = i % 256, (i // 256) % 256
        target = folder / f"set{i % subfolders:02d}" / f"face_{i:06d}.jpg"
        target.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(target), cv2.cvtColor(big, cv2.COLOR_GRAY2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return count


def timed_run(folder: Path, out: Path, workers: int, env: dict[str, str]) -> tuple[float, int]:
    command = [sys.executable, "-m", "emotion_batch", str(folder), "--out", str(out), "--workers", str(workers),
               "--quiet"]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise SystemExit(f"the run failed (exit {result.returncode}):\n{result.stderr}")
    return elapsed, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="write the photos and outputs here and keep them")
    args = parser.parse_args()

    env = dict(os.environ)
    if "EMOTION_BATCH_DETECTOR_MODEL" not in env and YUNET_IN_SHARED.is_file():
        env["EMOTION_BATCH_DETECTOR_MODEL"] = str(YUNET_IN_SHARED)
    work = args.keep or Path(tempfile.mkdtemp(prefix="many-files-"))
    try:
        photos, out = work / "photos", work / "out" / "results.csv"
        if not photos.is_dir() or len(list(photos.rglob("*.jpg"))) != args.files:
            shutil.rmtree(photos, ignore_errors=True)
            photos.mkdir(parents=True)
            write_photos(photos, args.files, args.size)
        shutil.rmtree(out.parent, ignore_errors=True)
        out.parent.mkdir(parents=True)
        first, code = timed_run(photos, out, args.workers, env)
        again, _ = timed_run(photos, out, args.workers, env)
        import pandas as pd

        summary = pd.read_csv(out.with_name("results_summary.csv"))
        ok = int((summary["status"] == "ok").sum())
        faces = int(summary["faces"].fillna(0).sum())
        print(f"{args.files} photos of {args.size}x{args.size} px, {args.workers} worker(s), "
              f"{os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(
            f"first run: {first:.1f} s, {args.files / first:.0f} files/s (exit {code}; {ok} ok, {faces} faces)"
        )
        print(f"rerun with nothing to do: {again:.2f} s")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
