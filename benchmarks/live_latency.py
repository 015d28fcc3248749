#!/usr/bin/env python
"""Live latency: from a frame's arrival to its rows on disk, for one stream and for two at once.

Each stream is a shared video served by ffmpeg over TCP on loopback at its native rate (`-re`, looped, stream
copy, MPEG-TS); each is analysed by its own `live` command process at --fps samples/s for --duration seconds.
The command measures each sample from the moment its packet was read to the return of the flush of its rows,
and writes the summary with --stats; this script collects those and prints, per run: samples, faces per sample,
latency median / p95 / max, and samples skipped because analysis fell behind.

Usage:
    EMOTION_BATCH_DETECTOR_MODEL=../shared/detectors/face_detection_yunet_2023mar.onnx \\
        nice -n 10 python benchmarks/live_latency.py [--duration 30] [--fps 5] [--streams 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", REPO.parent / "shared"))
DEFAULT_VIDEO = SHARED / "media" / "videos" / "petercunha_dinner.mp4"
LIVE = [sys.executable, "-c", "from emotion_batch.live.command import live_command; live_command()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(streams: int, video: Path, fps: float, duration: float, work: Path) -> list[dict]:
    servers, clients, stats = [], [], []
    try:
        for k in range(streams):
            port = free_port()
            servers.append(
                subprocess.Popen(
                    [shutil.which("ffmpeg") or "ffmpeg", "-nostdin", "-loglevel", "error", "-re"]
                    + ["-stream_loop", "-1", "-i", str(video), "-c", "copy", "-f", "mpegts"]
                    + [f"tcp://127.0.0.1:{port}?listen=1"],
                    stderr=subprocess.DEVNULL,  # "broken pipe" when the client stops first
                )
            )
            stats.append(work / f"stats_{streams}_{k}.json")
            clients.append(
                subprocess.Popen(
                    [*LIVE, f"tcp://127.0.0.1:{port}", "--out", str(work / f"live_{streams}_{k}.csv")]
                    + ["--fps", str(fps), "--duration", str(duration), "--stats", str(stats[-1]), "--quiet"]
                )
            )
        for client in clients:
            client.wait(duration + 120)
    finally:
        for process in clients + servers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(10)
    return [json.loads(p.read_text(encoding="utf-8")) for p in stats]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--fps", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if not args.video.is_file():
        sys.exit(f"video not found: {args.video} (set EMOTION_BATCH_SHARED or pass --video)")
    print(f"{args.video.name}, {args.fps:g} samples/s, {args.duration:g} s per run, {os.cpu_count()} CPU(s)")
    header = f"{'streams':>7} {'stream':>6} {'samples':>7} {'faces':>7} {'median':>8} {'p95':>8} {'max':>8} "
    print(header + f"{'skipped':>7} {'decoded':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for streams in args.streams:
            started = time.monotonic()
            for k, s in enumerate(run(streams, args.video, args.fps, args.duration, Path(tmp))):
                per = s["faces"] / max(1, s["samples"])
                print(
                    f"{streams:>7} {k:>6} {s['samples']:>7} {per:>7.1f} {s['latency_median_s']:>7.3f}s "
                    f"{s['latency_p95_s']:>7.3f}s {s['latency_max_s']:>7.3f}s {s['samples_skipped']:>7} "
                    f"{s['frames_decoded']:>7}"
                )
            print(f"        ({time.monotonic() - started:.0f} s wall)")


if __name__ == "__main__":
    main()
