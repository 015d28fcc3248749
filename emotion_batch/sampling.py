"""Turning a file into the frames to analyse, decoding sequentially and fully only the frames that are sampled.

Videos are read front to back: `grab()` decodes every frame (decoding is the unavoidable floor), `retrieve()`
converts only the sampled ones to BGR. Seeking with CAP_PROP_POS_FRAMES is never used: it is slow and
frame-inaccurate. Timestamps come from the container (CAP_PROP_POS_MSEC) because phone videos have variable
frame rates, so frame_index / fps is not a time.

Decoding overlaps with analysis: a video's frames are decoded by a background thread that stays at most
`prefetch` sampled frames ahead of the consumer (OpenCV releases the GIL while it decodes). The decoding itself is
unchanged - one thread, sequential, the same frames and timestamps - but a single long video keeps two cores
busy (decoding, and detection plus classification) instead of alternating between them, and the bounded queue
keeps memory flat.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .defaults import DEFAULT_FPS, DEFAULT_PREFETCH

# FFmpeg prints its own errors (e.g. "moov atom not found") straight to stderr, which would break the plain log
# format cron relies on; each problem is reported as a MediaError instead. OpenCV reads this on first use of
# FFmpeg; set OPENCV_FFMPEG_LOGLEVEL yourself (e.g. 32) to see FFmpeg's messages when debugging.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

# Tolerance when comparing a frame time with a sampling target: absorbs float noise in container timestamps.
_EPS = 1e-4

#: Decoding threads per video (FFmpeg frame threading). Unset or 0: OpenCV's default, one per core, which suits a
#: single file being analysed; 1 suits runs where every core already has its own worker process: on 2 cores, 2
#: workers over the shared videos at --fps 5 spent 2-12% less CPU and up to 11% less wall time with 1 (three A/B
#: runs). A worker pool can set it in its workers' environment; decoding stays sequential either way.
DECODER_THREADS_ENV = "EMOTION_BATCH_DECODER_THREADS"


def _open_video(path: Path) -> cv2.VideoCapture:
    try:
        threads = max(0, int(os.environ.get(DECODER_THREADS_ENV) or 0))
    except ValueError:
        threads = 0
    if threads:
        return cv2.VideoCapture(str(path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, threads])
    return cv2.VideoCapture(str(path))


class MediaError(Exception):
    """A file that cannot be decoded as the media its extension promises; the message names the cause."""


@dataclass(frozen=True)
class SamplingPlan:
    """Which frames of a video to analyse. Images are always their single frame."""

    #: Samples per second of video time, by container timestamp (default 2 when `every` is not given).
    fps: float | None = None
    #: Every Nth decoded frame, by frame index.
    every: int | None = None
    #: Window of video time in seconds; frames before `start` or after `end` are not sampled.
    start: float | None = None
    end: float | None = None
    #: Stop after this many sampled frames.
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and self.every is not None:
            raise ValueError("choose either fps or every, not both")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"every must be at least 1, got {self.every}")
        if self.start is not None and self.start < 0:
            raise ValueError(f"start must be >= 0 seconds, got {self.start}")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {self.max_frames}")

    @property
    def rate(self) -> float | None:
        """Samples per second when sampling by time, else None."""
        if self.every is not None:
            return None
        return self.fps if self.fps is not None else DEFAULT_FPS


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its decode index in the file, its container time, and BGR pixels."""

    index: int
    timestamp_s: float
    image: np.ndarray


def _check_readable(path: Path) -> None:
    """Fail with a specific reason (missing, permission, empty) before handing the path to a decoder."""
    try:
        with open(path, "rb") as fh:
            if not fh.read(1):
                raise MediaError("empty file (0 bytes)")
    except MediaError:
        raise
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        if os.path.islink(path) and not os.path.exists(path):
            reason = f"broken symlink ({reason})"
        raise MediaError(f"cannot read file: {reason}") from exc


_END = object()


def prefetched(frames: Iterator[Frame], depth: int) -> Iterator[Frame]:
    """Run the `frames` generator in a background thread, at most `depth` frames ahead of the consumer.

    Yields the same frames in the same order and re-raises the producer's exception at the same point. When the
    consumer stops early (break, exception, close), the producer is stopped and joined before this returns, so
    whatever the producer holds (the VideoCapture) can be released safely afterwards.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for frame in frames:
                if not put(frame):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(exc)
        finally:
            frames.close()

    producer = threading.Thread(target=produce, name="emotion-batch-decode", daemon=True)
    producer.start()
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        producer.join()


class FrameSampler:
    """Iterates the sampled frames of one file and records what it saw (decoded frames, duration).

    With `prefetch` > 0 a video is decoded in a background thread (see `prefetched`); `frames_decoded` and
    `duration_s` are final once iteration has ended.
    """

    def __init__(
        self, path: Path, media_type: str, plan: SamplingPlan, prefetch: int = DEFAULT_PREFETCH
    ) -> None:
        if media_type not in ("image", "video"):
            raise ValueError(f"unknown media type {media_type!r}")
        self.path = Path(path)
        self.media_type = media_type
        self.plan = plan
        self.prefetch = prefetch
        self.frames_decoded = 0
        self.duration_s: float | None = None

    def __iter__(self) -> Iterator[Frame]:
        _check_readable(self.path)
        if self.media_type == "image":
            yield self._image()
        else:
            yield from self._video()

    def _image(self) -> Frame:
        # Decoding from bytes works for any file name (OpenCV's imread needs UTF-8 paths). IMREAD_COLOR applies
        # the EXIF orientation and converts grey, 16-bit and alpha images to 8-bit BGR.
        data = np.fromfile(self.path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if image is None or image.size == 0:
            raise MediaError("cannot decode as an image (not an image, or a corrupt or unsupported one)")
        self.frames_decoded = 1
        self.duration_s = 0.0
        return Frame(index=0, timestamp_s=0.0, image=image)

    def _video(self) -> Iterator[Frame]:
        cap = _open_video(self.path)
        try:
            if not cap.isOpened():
                raise MediaError("cannot open as a video (not a video, or a corrupt or unsupported one)")
            frames = self._sample(cap)
            yield from prefetched(frames, self.prefetch) if self.prefetch > 0 else frames
        finally:
            cap.release()  # after `prefetched` has joined its thread

    def _sample(self, cap: cv2.VideoCapture) -> Iterator[Frame]:
        plan = self.plan
        meta_fps = cap.get(cv2.CAP_PROP_FPS)
        meta_fps = meta_fps if math.isfinite(meta_fps) and 0 < meta_fps < 1000 else 0.0
        # Only used when the container gives no usable timestamp for a frame.
        fallback_step = 1.0 / meta_fps if meta_fps else 1.0 / 25.0
        start = plan.start or 0.0
        rate = plan.rate
        next_k = 0  # index of the next time target start + k / rate
        in_window = 0  # frames seen inside [start, end], for --every
        sampled = 0
        prev_ts: float | None = None
        reached_end = True

        index = -1
        while cap.grab():
            index += 1
            ts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not math.isfinite(ts) or ts < 0 or (prev_ts is not None and ts <= prev_ts):
                ts = 0.0 if prev_ts is None else prev_ts + fallback_step
            prev_ts = ts
            self.frames_decoded = index + 1

            if ts < start - _EPS:
                continue
            if plan.end is not None and ts > plan.end + _EPS:
                reached_end = False
                break
            if rate is not None:
                take = ts + _EPS >= start + next_k / rate
                if take:
                    # Several targets may fall before this frame (sampling faster than the video): one frame.
                    next_k = math.floor((ts + _EPS - start) * rate) + 1
            else:
                take = in_window % plan.every == 0  # type: ignore[operator]
            in_window += 1
            if not take:
                continue
            ok, image = cap.retrieve()
            if not ok or image is None:
                continue  # a damaged frame: skip it, keep the timeline going
            yield Frame(index=index, timestamp_s=ts, image=image)
            sampled += 1
            if plan.max_frames is not None and sampled >= plan.max_frames:
                reached_end = False
                break

        if index < 0:
            raise MediaError("no decodable video frames")
        if reached_end and prev_ts is not None:
            self.duration_s = prev_ts + fallback_step
        else:
            count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            self.duration_s = count / meta_fps if meta_fps and count > 0 else None
