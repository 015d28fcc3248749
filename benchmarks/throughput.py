#!/usr/bin/env python
"""Throughput of the emotion-batch pipeline against the video-decode floor, on a folder of videos.

Every frame has to be decoded to reach the sampled ones, so decoding is the physical floor of the pipeline.
This script times, over the same files and with the same number of processes:

1. the decode-only baseline: OpenCV decodes every frame (`grab()`) and does nothing else;
2. the pipeline: `emotion_batch` with the given sampling, detector and model (no outputs written);

and reports video-seconds per wall-second (real-time factor), sampled frames/s, faces/s, the ratio of the two
wall times, and peak RSS.

Usage:
    python benchmarks/throughput.py                       # ../shared/media/videos, --fps 5, 1 worker
    python benchmarks/throughput.py DIR --fps 5 --workers 2
    python benchmarks/throughput.py --every 1             # every-frame mode
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2

from emotion_batch import api
from emotion_batch.sources import discover

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", REPO.parent / "shared"))


def decode_only(path: str) -> tuple[int, float]:
    """Decode every frame of one video; return (frames, last timestamp in seconds)."""
    cv2.setNumThreads(1)
    cap = cv2.VideoCapture(path)
    frames, last = 0, 0.0
    while cap.grab():
        frames += 1
        last = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
    cap.release()
    return frames, last


def peak_rss_mib() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child, in MiB (Linux: KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=SHARED / "media" / "videos")
    parser.add_argument("--fps", type=float)
    parser.add_argument("--every", type=int)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model", type=Path, help="emotion model .onnx (default: bundled)")
    parser.add_argument("--detector-model", type=Path, help="YuNet file (default: usual lookup)")
    args = parser.parse_args(argv)
    if args.fps is None and args.every is None:
        args.fps = 5.0

    videos = [s for s in discover([args.folder]) if s.media_type == "video"]
    if not videos:
        print(f"no videos under {args.folder}", file=sys.stderr)
        return 2
    paths = [str(s.path) for s in videos]

    started = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            decoded = list(pool.map(decode_only, paths))
    else:
        decoded = [decode_only(p) for p in paths]
    decode_wall = time.perf_counter() - started
    frames = sum(f for f, _ in decoded)
    video_s = sum(last for _, last in decoded)

    options = api.Options(
        fps=args.fps,
        every=args.every,
        workers=args.workers,
        model=args.model,
        detector_model=args.detector_model,
    )
    job = api.prepare([args.folder], options)
    job = api.Job([s for s in job.sources if s.media_type == "video"], job.settings, job.workers)
    started = time.perf_counter()
    results = list(api.iter_results(job))
    pipeline_wall = time.perf_counter() - started
    sampled = sum(int(r.summary.get("frames_sampled") or 0) for r in results)
    faces = sum(int(r.summary.get("faces") or 0) for r in results)
    failed = [r.source.source for r in results if r.status != "ok"]

    own, children = peak_rss_mib()
    sampling = f"--fps {args.fps:g}" if args.fps else f"--every {args.every}"
    print(
        f"{len(videos)} videos, {frames} frames, {video_s:.1f} s of video; {sampling}, {args.workers} worker(s)"
    )
    print(f"  detector {job.settings.detector.name}, model {job.settings.model.name}")
    print(f"  decode only : {decode_wall:6.2f} s wall  {video_s / decode_wall:6.1f}x real time  "
          f"{frames / decode_wall:7.1f} decoded frames/s")  # fmt: skip
    print(f"  pipeline    : {pipeline_wall:6.2f} s wall  {video_s / pipeline_wall:6.1f}x real time  "
          f"{sampled / pipeline_wall:7.1f} sampled frames/s  {faces / pipeline_wall:7.1f} faces/s")  # fmt: skip
    print(f"  ratio       : pipeline / decode-only = {pipeline_wall / decode_wall:.2f}")
    print(
        f"  sampled frames {sampled}, faces {faces}; peak RSS {own:.0f} MiB (largest worker {children:.0f} MiB)"
    )
    if failed:
        print(f"  failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
