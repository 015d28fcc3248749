"""Turning a file into the frames to analyse, decoding sequentially and converting only the sampled frames.

Videos are read front to back by a reader from `decoding` (never seeking: seeking is slow and frame-inaccurate),
which gives every frame's index and container timestamp and converts to BGR only the frames sampled here.
Timestamps come from the container because phone videos have variable frame rates, so frame_index / fps is not
a time. When sampling by time, the sampler gives the reader its rule (would a frame at this time be sampled?),
so the reader may skip decoding frames the rule rejects that no other frame refers to.

Decoding overlaps with analysis: a video's frames are decoded by a background thread that stays at most
`prefetch` sampled frames ahead of the consumer (the decoders release the GIL while they decode). The decoding
itself is unchanged - one thread, sequential, the same frames and timestamps - but a single long video keeps two
cores busy (decoding, and detection plus classification) instead of alternating between them, and the bounded
queue keeps memory flat.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..defaults import DEFAULT_FPS, DEFAULT_PREFETCH
from .decoding import (
    EPS,
    MediaError,
    NoFrames,
    UnreadableMedia,
    VideoReader,
    check_frame_size,
    open_reader,
    pillow_to_bgr,
    to_bgr8,
)
from .inspection import open_image, sniff

__all__ = ["Frame", "FrameSampler", "MediaError", "SamplingPlan", "prefetched"]


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
                raise UnreadableMedia("empty file (0 bytes)")
    except UnreadableMedia:
        raise
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        if os.path.islink(path) and not os.path.exists(path):
            reason = f"broken symlink ({reason})"
        raise UnreadableMedia(f"cannot read file: {reason}") from exc


_END = object()


def prefetched(frames: Generator[Frame, None, None], depth: int) -> Iterator[Frame]:
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
            yield item
    finally:
        stop.set()
        producer.join()


def _sampled_after(before: float, now: float, *, start: float, rate: float) -> bool:
    """Whether a frame at `now` that follows a frame at `before` could be sampled: a target time start + k / rate
    lies in (before, now]. Errs towards yes (a 1%-of-a-step margin), since a wrong no would lose a sample."""
    if now < start - EPS:
        return False
    margin = 0.01
    return math.floor((now - start) * rate + margin) > math.floor((before - start) * rate - margin)


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
        # the EXIF orientation and converts grey, 16-bit and alpha images to 8-bit BGR. It refuses 32-bit float
        # TIFFs, which IMREAD_UNCHANGED decodes; `to_bgr8` brings those to 8 bits. HEIF/AVIF go through Pillow.
        data = np.fromfile(self.path, dtype=np.uint8)
        fmt = sniff(data[:4096].tobytes())
        if fmt in ("HEIF", "AVIF"):
            image = self._pillow_image(fmt)
        else:
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if image is None and fmt == "TIFF":
                unchanged = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
                image = to_bgr8(unchanged) if unchanged is not None and unchanged.size else None
        if image is None or image.size == 0:
            raise MediaError("cannot decode as an image (not an image, or a corrupt or unsupported one)")
        check_frame_size(image)
        self.frames_decoded = 1
        self.duration_s = 0.0
        return Frame(index=0, timestamp_s=0.0, image=image)

    def _pillow_image(self, fmt: str) -> np.ndarray | None:
        from PIL import ImageOps

        with open(self.path, "rb") as fh:
            try:
                picture = open_image(fh, fmt)
                if picture is None:
                    raise MediaError(f"cannot decode {fmt}: no decoder for it is installed (pillow-heif)")
                with picture:
                    picture.load()
                    return pillow_to_bgr(ImageOps.exif_transpose(picture))
            except MediaError:
                raise
            except Exception as exc:  # noqa: BLE001 - the plugin's own error names the cause
                raise MediaError(f"cannot decode as a {fmt} image ({exc})") from exc

    def _video(self) -> Iterator[Frame]:
        reader = open_reader(self.path, can_skip=self.plan.rate is not None)
        try:
            frames = self._sample(reader)
            yield from prefetched(frames, self.prefetch) if self.prefetch > 0 else frames
        finally:
            reader.close()  # after `prefetched` has joined its thread

    def _sample(self, reader: VideoReader) -> Generator[Frame, None, None]:
        plan = self.plan
        # Only used when the container gives no usable timestamp for a frame.
        fallback_step = 1.0 / reader.meta_fps if reader.meta_fps else 1.0 / 25.0
        start = plan.start or 0.0
        rate = plan.rate
        next_k = 0  # index of the next time target start + k / rate
        in_window = 0  # frames seen inside [start, end], for --every
        sampled = 0
        prev_ts: float | None = None
        reached_end = True
        if rate is not None:
            reader.skip_rule = functools.partial(_sampled_after, start=start, rate=rate)

        for picture in reader.pictures():
            ts = picture.timestamp_s
            if ts is None or not math.isfinite(ts) or ts < 0 or (prev_ts is not None and ts <= prev_ts):
                ts = 0.0 if prev_ts is None else prev_ts + fallback_step
                reader.skip_rule = None  # the container's times are not the sampler's: decode everything
            prev_ts = ts
            self.frames_decoded = reader.frames_read

            if ts < start - EPS:
                continue
            if plan.end is not None and ts > plan.end + EPS:
                reached_end = False
                break
            if rate is not None:
                take = ts + EPS >= start + next_k / rate
                if take:
                    # Several targets may fall before this frame (sampling faster than the video): one frame.
                    next_k = math.floor((ts + EPS - start) * rate) + 1
            else:
                take = in_window % plan.every == 0  # type: ignore[operator]
            in_window += 1
            if not take:
                continue
            image = picture.image()
            if image is None:
                continue  # a damaged frame: skip it, keep the timeline going
            if not sampled:
                check_frame_size(image)
            yield Frame(index=picture.index, timestamp_s=ts, image=image)
            sampled += 1
            if plan.max_frames is not None and sampled >= plan.max_frames:
                reached_end = False
                break

        self.frames_decoded = reader.frames_read
        if prev_ts is None:
            raise NoFrames("no decodable video frames")
        if reached_end:
            end = getattr(reader, "end_s", None)  # a reader that knows its length (ImageSequenceReader)
            self.duration_s = end if end is not None and end > prev_ts else prev_ts + fallback_step
        else:
            count = reader.frame_count
            self.duration_s = count / reader.meta_fps if reader.meta_fps and count > 0 else None
