#!/usr/bin/env python
"""Regenerate the README's example image, docs/timeline_example.png, from a video in the shared media.

The image is exactly what a user's run draws: the video is analysed by the command's own incremental run
(`emotion_batch.analyze(..., out=...)`, default sampling, bundled model) into a temporary folder, and its
timeline chart (one panel per person, with the thumbnail the worker cut) is copied here. Nothing else is kept.

Usage:
    python docs/make_example.py                      # $EMOTION_BATCH_SHARED/media/videos/facenetpytorch_video.mp4
    python docs/make_example.py VIDEO [--out PATH] [--fps 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", REPO.parent / "shared"))
DEFAULT_VIDEO = SHARED / "media" / "videos" / "facenetpytorch_video.mp4"
YUNET_IN_SHARED = SHARED / "detectors" / "face_detection_yunet_2023mar.onnx"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", nargs="?", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "timeline_example.png")
    parser.add_argument("--fps", type=float, help="samples per second (default: the command's)")
    args = parser.parse_args(argv)
    if not args.video.is_file():
        print(f"no such video: {args.video} (set EMOTION_BATCH_SHARED or pass one)", file=sys.stderr)
        return 2

    from emotion_batch import analyze
    from emotion_batch.output.charts import chart_filename

    options: dict[str, object] = {"workers": 1}
    if args.fps:
        options["fps"] = args.fps
    if "EMOTION_BATCH_DETECTOR_MODEL" not in os.environ and YUNET_IN_SHARED.is_file():
        options["detector_model"] = YUNET_IN_SHARED
    with tempfile.TemporaryDirectory() as scratch:
        inputs = Path(scratch) / "in"
        inputs.mkdir()
        (inputs / args.video.name).symlink_to(args.video.resolve())
        out = Path(scratch) / "results.csv"
        rows = analyze(inputs, out=out, progress=False, **options)
        chart = out.with_name(f"{out.stem}_charts") / chart_filename(args.video.name)
        if not chart.is_file():
            print(f"no timeline chart for {args.video} (no face found?)", file=sys.stderr)
            return 1
        shutil.copyfile(chart, args.out)
    people = rows["track_id"].dropna().nunique()
    print(f"{args.out}: {args.video.name}, {int((rows['n_faces'] > 0).sum())} faces, {people} people")
    return 0


if __name__ == "__main__":
    sys.exit(main())
