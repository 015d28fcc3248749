#!/usr/bin/env python
"""Throughput of the emotion-batch pipeline against the video-decode floor, on a folder of videos.

Every frame has to be decoded to reach the sampled ones, so decoding is the physical floor of the pipeline.
This script times, over the same files and with the same number of processes:

1. the decode-only baseline: the files decoded sequentially with OpenCV (`grab()` on every frame, nothing else),
   spread over `--workers` processes that are started before the clock starts;
2. the pipeline: `emotion_batch`'s API with the given sampling, detector and model, in worker processes as the
   command runs it (no outputs written), each run in a fresh interpreter and timed from `prepare` to the last
   result, so forking the workers and loading the model and detector are included as a user's run pays them
   (the fork server they fork from starts while the package imports, as in the command);

3. the whole command as users run it (`emotion-batch FOLDER --out ...`: charts, thumbnails, tables and report on),
   each run into a fresh output folder, alternating with the same command with `--no-charts --no-report`, so
   the cost of what people read is the overhead of the one over the other (median of the paired ratios), and
   the CPU of the command's own process (where the charts and the report are drawn) in each mode;

and reports video-seconds per wall-second (real-time factor), sampled frames/s, faces/s, the ratio of the two
wall times (the median over repeats of each back-to-back pair), CPU seconds, and peak RSS of the whole process
tree (run, fork server and workers, sampled every 50 ms; needs psutil).
Then it measures face recall: the faces that plain cv2.FaceDetectorYN finds at 640 px working width (area-averaged
downscale, as the pipeline first did) on the same sampled frames, and the share of them the pipeline also
reported (same frame, IoU >= 0.5).

Usage:
    python benchmarks/throughput.py                     # $EMOTION_BATCH_SHARED/media/videos, --fps 5, all cores
    python benchmarks/throughput.py DIR --fps 5 --workers 1
    python benchmarks/throughput.py --every 1 --size 640x360   # every-frame mode on the 640x360 videos
    python benchmarks/throughput.py --repeat 3          # median of 3 timings of each
    python benchmarks/throughput.py ../shared/media/videos --repeat 8 --command-only   # the outputs' overhead only
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Self, TypeVar

import cv2

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMOTION_BATCH_SHARED", REPO.parent / "shared"))
YUNET_IN_SHARED = SHARED / "detectors" / "face_detection_yunet_2023mar.onnx"
T = TypeVar("T")


# --- decode-only baseline ---------------------------------------------------------------------------------------
def decode_only(path: str) -> tuple[int, float, float]:
    """Decode every frame of one video; return (frames, last timestamp in seconds, CPU seconds it took)."""
    cv2.setNumThreads(1)
    cpu = time.process_time()
    cap = cv2.VideoCapture(path)
    frames, last = 0, 0.0
    while cap.grab():
        frames += 1
        last = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
    cap.release()
    return frames, last, time.process_time() - cpu


def _ready() -> None:
    cv2.setNumThreads(1)


def time_decode_only(paths: list[str], workers: int) -> tuple[float, float, list[tuple[int, float, float]]]:
    """(wall s, CPU s, per-file results) of decoding `paths` in `workers` processes (started beforehand)."""
    started = time.perf_counter()
    if workers <= 1:
        decoded = [decode_only(p) for p in paths]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in [pool.submit(_ready) for _ in range(workers)]:
                future.result()
            started = time.perf_counter()
            decoded = list(pool.map(decode_only, paths))
    wall = time.perf_counter() - started
    return wall, sum(cpu for _, _, cpu in decoded), decoded


# --- pipeline -----------------------------------------------------------------------------------------------------
def require_psutil() -> None:
    """Memory and CPU of a process tree need psutil; say so before minutes of work rather than after."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        sys.exit('these benchmarks need psutil: pip install ".[bench]" (or pip install psutil)')


class TreeSampler:
    """Peak resident memory and CPU seconds of a process and all its descendants, sampled every 50 ms.

    Needs psutil. CPU is the last reading of each process seen, so a process that lives less than 50 ms is
    missed; the fork server and the workers live for the whole run.
    """

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._interval = interval_s
        self._cpu: dict[int, float] = {}
        self.peak_rss = 0
        self.peak_process_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_s(self, exclude_root: bool = True) -> float:
        return sum(cpu for pid, cpu in self._cpu.items() if not (exclude_root and pid == self._root.pid))

    def _run(self) -> None:
        import psutil

        while True:
            try:
                processes = [self._root, *self._root.children(recursive=True)]
            except psutil.Error:  # the root has exited
                return
            total = 0
            for process in processes:
                try:
                    with process.oneshot():
                        rss = process.memory_info().rss
                        times = process.cpu_times()
                except psutil.Error:  # exited while being read
                    continue
                total += rss
                self.peak_process_rss = max(self.peak_process_rss, rss)
                self._cpu[process.pid] = times.user + times.system
            self.peak_rss = max(self.peak_rss, total)
            if self._stop.wait(self._interval):
                return


def with_peak_rss(run: Callable[[], T]) -> tuple[T, int]:
    """`run()`'s result and the peak total RSS of this process and its descendants while it ran."""
    with TreeSampler(os.getpid()) as sampler:
        result = run()
    return result, sampler.peak_rss


def _pipeline_once(conn, folder: Path, options, names: set[str]) -> None:
    """One run in a fresh interpreter, timed from `prepare` to the last result, as the command runs it.

    A fresh process per run means each run pays for starting and initialising its workers (forking them,
    loading the model and detector) like a user's run does. Left out, as in the baseline: the interpreter's
    own start and the package import, and with them the fork server's start, which the command begins first
    thing so that it imports OpenCV and onnxruntime while the command imports its own modules (the baseline's
    decode processes are likewise started before its clock).
    """
    from emotion_batch.batch.prestart import start_worker_server

    start_worker_server(options.max_pixels, options.workers)
    from emotion_batch import api
    from emotion_batch.batch.run import drive
    from emotion_batch.output.progress import NoProgress

    cpu, started = time.process_time(), time.perf_counter()
    job = api.prepare([folder], options)
    job = dataclasses.replace(job, sources=[s for s in job.sources if s.source in names])
    results = list(drive(api.make_executor(job), job.sources, job, NoProgress()))
    conn.send((time.perf_counter() - started, time.process_time() - cpu, results))
    conn.close()


def time_pipeline(folder: Path, options, names: set[str]) -> tuple[float, float, list, int, int]:
    """(wall s, CPU s of the run's process and its workers, results, peak tree RSS, peak RSS of one process)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_pipeline_once, args=(send, folder, options, names))
    process.start()
    send.close()
    with TreeSampler(process.pid) as sampler:
        wall, own_cpu, results = receive.recv()
    process.join()
    return wall, own_cpu + sampler.cpu_s(), results, sampler.peak_rss, sampler.peak_process_rss


# --- the whole command ------------------------------------------------------------------------------------------
def time_command(folder: Path, args: argparse.Namespace, outputs: bool, scratch: Path) -> tuple[float, float]:
    """(wall s, CPU s of the command's own process) of one `emotion-batch FOLDER --out <fresh folder>/results.csv`
    (with charts and report, or with `--no-charts --no-report`), from the command's start to its exit, interpreter
    start included. The CPU is the parent's alone (its threads: the drawer and the run driver), not the workers'
    (they are the fork server's children): what the outputs cost, less noisy on a shared machine than wall time."""
    import subprocess

    with tempfile.TemporaryDirectory(dir=scratch) as out:
        command = [sys.executable, "-m", "emotion_batch", str(folder), "--out", f"{out}/results.csv"]
        command += ["--workers", str(args.workers)]
        command += ["--fps", f"{args.fps:g}"] if args.fps else ["--every", str(args.every)]
        if args.detector_model:
            command += ["--detector-model", str(args.detector_model)]
        if args.model:
            command += ["--model", str(args.model)]
        if not outputs:
            command += ["--no-charts", "--no-report"]
        with tempfile.TemporaryFile() as stderr:
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)  # noqa: S603
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
            stderr.seek(0)
            errors = stderr.read().decode(errors="replace")
    if process.returncode not in (0, 1):  # 1: some file failed, as on a folder with a broken file
        sys.exit(f"{' '.join(command)} failed ({process.returncode}):\n{errors[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def command_overhead(folder: Path, args: argparse.Namespace, pipeline_wall: float | None) -> None:
    """Time the command with and without charts and report, alternating, and print the overhead."""
    scratch = Path(tempfile.gettempdir())
    full: list[tuple[float, float]] = []
    bare: list[tuple[float, float]] = []
    for i in range(args.repeat):  # alternate, and swap which goes first, so a drifting load hits both alike
        for outputs in (True, False) if i % 2 == 0 else (False, True):
            (full if outputs else bare).append(time_command(folder, args, outputs, scratch))
    walls_full, walls_bare = [w for w, _ in full], [w for w, _ in bare]
    print(f"  command     : {statistics.median(walls_full):6.2f} s wall with charts and report "
          f"({min(walls_full):.2f}-{max(walls_full):.2f}), {statistics.median(walls_bare):6.2f} s with --no-charts "
          f"--no-report ({min(walls_bare):.2f}-{max(walls_bare):.2f})")  # fmt: skip
    if pipeline_wall:
        print(f"                the pipeline alone (above): {pipeline_wall:.2f} s")
    paired = sorted(f / b - 1 for f, b in zip(walls_full, walls_bare))
    spread = f" (paired runs {paired[0]:+.0%} to {paired[-1]:+.0%})" if len(paired) > 1 else ""
    print(f"  overhead    : charts and report add {statistics.median(paired):+.1%} wall, median of "
          f"{len(paired)} pair(s){spread}")  # fmt: skip
    cpu_full, cpu_bare = statistics.median(c for _, c in full), statistics.median(c for _, c in bare)
    print(f"  parent CPU  : {cpu_full:.2f} s with charts and report, {cpu_bare:.2f} s without: "
          f"{cpu_full - cpu_bare:+.2f} s (medians; the command's own process, not its workers)")  # fmt: skip


# --- recall -------------------------------------------------------------------------------------------------------
def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _clipped(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[int, ...]:
    """A box clipped to the frame in integer pixels, as the CSV writes it."""
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(width, round(x + w)), min(height, round(y + h))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


class ReferenceYuNet:
    """Plain cv2.FaceDetectorYN on an INTER_AREA copy `width` px wide: the detection the pipeline started from."""

    def __init__(self, spec, width: int = 640) -> None:
        from emotion_batch.vision.detection import OpenCVYuNetDetector

        self.width = width
        # No further downscaling inside: this class makes the working copy itself.
        self.detector = OpenCVYuNetDetector(dataclasses.replace(spec, working_width=10**6, min_face=0))
        self.min_face = spec.min_face

    def detect(self, image) -> list[tuple[float, float, float, float]]:
        back = 1.0
        if image.shape[1] > self.width:
            back = image.shape[1] / self.width
            size = (self.width, max(1, round(image.shape[0] / back)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        faces = [(f.x * back, f.y * back, f.w * back, f.h * back) for f in self.detector.detect(image)]
        return [f for f in faces if min(f[2], f[3]) >= self.min_face]


def face_recall(results: list, settings, reference_width: int = 640) -> tuple[int, int, int]:
    """(reference faces, of them found by the pipeline, pipeline faces not in the reference).

    The reference is cv2.FaceDetectorYN at `reference_width` px working width (area-averaged downscale), with the
    run's score threshold and minimum face size, on the same sampled frames; a face counts as found when the
    pipeline reported a face on the same frame with IoU >= 0.5 (each pipeline face matches one reference face).
    """
    from emotion_batch.media.sampling import FrameSampler

    reference = ReferenceYuNet(settings.detector, reference_width)
    total = found = extra = 0
    for result in results:
        faces = result.rows[result.rows["n_faces"] > 0]
        by_frame: dict[int, list[tuple[int, ...]]] = {}
        for row in faces.itertuples():
            by_frame.setdefault(int(row.frame_index), []).append((row.x, row.y, row.w, row.h))
        for frame in FrameSampler(result.source.path, "video", settings.sampling, prefetch=0):
            height, width = frame.image.shape[:2]
            want = [_clipped(*face, width, height) for face in reference.detect(frame.image)]
            got = by_frame.pop(frame.index, [])
            total += len(want)
            for box in want:
                best = max(range(len(got)), key=lambda i: _iou(box, got[i]), default=None)
                if best is not None and _iou(box, got[best]) >= 0.5:
                    found += 1
                    got.pop(best)
            extra += len(got)
        extra += sum(len(v) for v in by_frame.values())
    return total, found, extra


# --- main -------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from emotion_batch.defaults import DEFAULT_WORKERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=SHARED / "media" / "videos")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float, help="samples per second of video (default 5)")
    sampling.add_argument("--every", type=int, help="every Nth frame (1: every frame)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="default: number of cores")
    parser.add_argument("--size", help="only videos of this frame size, e.g. 640x360")
    parser.add_argument("--repeat", type=int, default=1, help="time each this many times, report the median")
    parser.add_argument(
        "--decoder-threads",
        type=int,
        help="decoding threads per video in the pipeline ($EMOTION_BATCH_DECODER_THREADS; the baseline keeps "
        "OpenCV's default)",
    )
    parser.add_argument("--no-recall", action="store_true", help="skip the face-recall measurement")
    parser.add_argument(
        "--no-command", action="store_true", help="skip timing the whole command (charts and report overhead)"
    )
    parser.add_argument(
        "--command-only",
        action="store_true",
        help="only time the whole command with and without charts and report (all files of FOLDER, any media)",
    )
    parser.add_argument("--working-width", type=int, help="the pipeline's detection width (default: its own)")
    parser.add_argument("--model", type=Path, help="emotion model .onnx (default: bundled)")
    parser.add_argument(
        "--detector-model", type=Path, help="YuNet file (default: usual lookup, then shared/)"
    )
    args = parser.parse_args(argv)
    require_psutil()
    if args.fps is None and args.every is None:
        args.fps = 5.0
    if args.detector_model is None and "EMOTION_BATCH_DETECTOR_MODEL" not in os.environ:
        from emotion_batch.vision.detection import locate_yunet

        if locate_yunet() is None and YUNET_IN_SHARED.is_file():
            args.detector_model = YUNET_IN_SHARED
    return args


def frame_size(path: Path) -> str:
    cap = cv2.VideoCapture(str(path))
    size = f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
    cap.release()
    return size


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from emotion_batch import api

    options = api.Options(
        fps=args.fps,
        every=args.every,
        workers=args.workers,
        model=args.model,
        detector_model=args.detector_model,
        **({"working_width": args.working_width} if args.working_width else {}),
        isolate=True,  # as the command runs: files analysed in worker processes, even with one worker
    )
    if args.command_only:
        print(f"{args.folder}: the command, {args.workers} worker(s), {args.repeat} pair(s)")
        command_overhead(args.folder, args, None)
        return 0
    job = api.prepare([args.folder], options)
    videos = [s for s in job.sources if s.media_type == "video"]
    if args.size:
        videos = [s for s in videos if frame_size(s.path) == args.size]
    if not videos:
        print(
            f"no videos under {args.folder}" + (f" of size {args.size}" if args.size else ""), file=sys.stderr
        )
        return 2
    job = dataclasses.replace(job, sources=videos)
    paths = [str(s.path) for s in videos]
    names = {s.source for s in videos}

    if args.decoder_threads is not None:  # inherited by the worker processes, which start after this
        os.environ["EMOTION_BATCH_DECODER_THREADS"] = str(args.decoder_threads)
    decode_runs, pipeline_runs = [], []
    for _ in range(args.repeat):  # alternate, so a change in machine load hits both alike
        decode_runs.append(time_decode_only(paths, args.workers))
        pipeline_runs.append(time_pipeline(args.folder, options, names))
    decode_wall = statistics.median(r[0] for r in decode_runs)
    decode_cpu = statistics.median(r[1] for r in decode_runs)
    pipeline_wall = statistics.median(r[0] for r in pipeline_runs)
    pipeline_cpu = statistics.median(r[1] for r in pipeline_runs)
    peak_tree = max(r[3] for r in pipeline_runs)
    peak_process = max(r[4] for r in pipeline_runs)
    results = pipeline_runs[-1][2]

    decoded = decode_runs[-1][2]
    frames = sum(f for f, _, _ in decoded)
    video_s = sum(last for _, last, _ in decoded)
    sampled = sum(int(r.summary.get("frames_sampled") or 0) for r in results)
    faces = sum(int(r.summary.get("faces") or 0) for r in results)
    failed = [r.source.source for r in results if r.status != "ok"]
    sampling = f"--fps {args.fps:g}" if args.fps else f"--every {args.every}"
    settings = job.settings

    print(
        f"{len(videos)} videos, {frames} frames, {video_s:.1f} s of video; {sampling}, {args.workers} worker(s)"
        + (f", median of {args.repeat}" if args.repeat > 1 else "")
    )
    threads = os.environ.get("EMOTION_BATCH_DECODER_THREADS") or (
        "1" if args.workers > 1 else "OpenCV default"
    )
    print(
        f"  detector {settings.detector.name}, model {settings.model.name}, cores {os.cpu_count()}, "
        f"working width {settings.detector.working_width} px, pipeline decoder threads {threads}"
    )
    print(f"  decode only : {decode_wall:6.2f} s wall  {video_s / decode_wall:6.1f}x real time  "
          f"{frames / decode_wall:7.1f} decoded frames/s  "
          f"(CPU {decode_cpu:.2f} s, {decode_cpu / decode_wall:.1f} cores busy)")  # fmt: skip
    print(f"  pipeline    : {pipeline_wall:6.2f} s wall  {video_s / pipeline_wall:6.1f}x real time  "
          f"{sampled / pipeline_wall:7.1f} sampled frames/s  {faces / pipeline_wall:7.1f} faces/s  "
          f"(CPU {pipeline_cpu:.2f} s incl. start-up, {pipeline_cpu / pipeline_wall:.1f} cores busy)")  # fmt: skip
    # Each repeat times the baseline and then the pipeline, so the ratio of a pair cancels the slow drifts of a
    # shared machine; the median of the paired ratios is the headline figure.
    paired = sorted(p[0] / d[0] for d, p in zip(decode_runs, pipeline_runs))
    spread = f" (paired runs {paired[0]:.2f}-{paired[-1]:.2f})" if len(paired) > 1 else ""
    print(f"  ratio       : pipeline / decode-only = {statistics.median(paired):.2f} wall{spread}, "
          f"{pipeline_cpu / decode_cpu:.2f} CPU")  # fmt: skip
    print(f"  peak RSS    : {peak_tree / 2**20:.0f} MiB for the process tree "
          f"(largest process {peak_process / 2**20:.0f} MiB)")  # fmt: skip
    print(f"  sampled frames {sampled}, faces {faces}")
    if not args.no_recall and settings.detector.kind == "yunet":
        total, found, extra = face_recall(results, settings)
        share = found / total if total else 1.0
        print(
            f"  recall      : {found} of the {total} faces cv2.FaceDetectorYN finds at 640 px ({share:.1%}); "
            f"{extra} reported faces not among them"
        )
    if not args.no_command:
        command_overhead(args.folder, args, pipeline_wall)
    if failed:
        print(f"  failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
