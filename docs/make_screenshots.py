#!/usr/bin/env python
"""Regenerate docs/screenshots/: the report of the shared videos in headless Chromium, 1280 px wide.

The command runs for real (`emotion-batch VIDEOS --out TMP/results.csv`, bundled model, default settings) into
a temporary folder. Two pictures of its report are kept:
- report-1280-top.jpg: the first 2,000 px (run, totals, files, overview);
- report-1280-videos.jpg: the first 2,050 px of the "Videos" section (the first videos' people and
  timelines). It is taken from a copy of the report without the sections above it, since headless Chromium
  does not scroll to a fragment before its screenshot.

Usage:
    python docs/make_screenshots.py                    # $EMOTION_BATCH_SHARED/media/videos
    python docs/make_screenshots.py VIDEOS [--out docs/screenshots]

Needs Chromium (`chromium` on PATH, or $EMOTION_BATCH_CHROMIUM) and a YuNet file where `emotion-batch` finds it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", REPO.parent / "shared"))
SHOTS = (("report-1280-top.jpg", None, 2000), ("report-1280-videos.jpg", '<section id="videos">', 2050))


def chromium() -> str:
    for name in (os.environ.get("EMOTION_BATCH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return str(shutil.which(name))
    raise SystemExit(
        "no Chromium found: install it (Debian: apt-get install chromium) or set EMOTION_BATCH_CHROMIUM"
    )


def screenshot(page: Path, png: Path, height: int, profile: Path) -> None:
    args = [
        chromium(),
        "--headless",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
        "--run-all-compositor-stages-before-draw",
        f"--window-size=1280,{height}",
        f"--screenshot={png}",
        page.as_uri(),
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if not png.is_file():
        raise SystemExit(f"chromium wrote no screenshot (rc {result.returncode}): {result.stderr[-2000:]}")


def from_section(report: str, marker: str) -> str:
    """The report without the sections before `marker` (its head, styles and page wrapper kept)."""
    wrapper = report.index("<main>") + len("<main>")
    return report[:wrapper] + report[report.index(marker) :]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("videos", type=Path, nargs="?", default=SHARED / "media" / "videos")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="emotion-screenshots-") as work:
        tmp = Path(work)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "emotion_batch",
                str(args.videos),
                "--out",
                str(tmp / "results.csv"),
                "-q",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        report = tmp / "results_report.html"
        if run.returncode not in (0, 1) or not report.is_file():
            raise SystemExit(f"emotion-batch failed (exit {run.returncode}): {run.stderr[-2000:]}")
        text = report.read_text(encoding="utf-8")
        args.out.mkdir(parents=True, exist_ok=True)
        for name, marker, height in SHOTS:
            page = report
            if marker:
                page = tmp / f"from-{name}.html"
                page.write_text(from_section(text, marker), encoding="utf-8")
            png = tmp / f"{name}.png"
            screenshot(page, png, height, tmp / "profile")
            cv2.imwrite(str(args.out / name), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 85])
            print(f"{args.out / name}: {page.name}, 1280x{height}")


if __name__ == "__main__":
    main()
