"""Reading a video front to back, frame by frame, with the container's timestamps; never seeking.

Two readers give the same frames, indices and timestamps:

- `OpenCVReader` decodes every frame (`grab()`), and converts to BGR only the frames asked for (`retrieve()`).
- `PyAVReader` (FFmpeg through PyAV) also skips the decoding of frames that no other frame refers to (most
  B-frames of H.264) while they lie before the next time the sampler wants. Such a frame can never be sampled
  and nothing else needs its pixels, so skipping it changes no result; it saves a third of the decoding CPU on
  typical H.264 files, which is most of what sparse sampling costs. A frame's index is its position in
  presentation order among all the stream's packets, skipped or not, so indices match `OpenCVReader`'s.

`open_reader` picks PyAV when the sampler can use skipping (sampling by time) and PyAV opens the file, and OpenCV
otherwise; OpenCV also stays the authority on files PyAV cannot open or read. Set EMOTION_BATCH_DECODER=opencv
to always use OpenCV.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..defaults import DECODER_THREADS_ENV

log = logging.getLogger(__name__)

# FFmpeg prints its own errors (e.g. "moov atom not found") straight to stderr, which would break the plain log
# format cron relies on; each problem is reported as a MediaError instead. OpenCV reads this on first use of
# FFmpeg; set OPENCV_FFMPEG_LOGLEVEL yourself (e.g. 32) to see FFmpeg's messages when debugging.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

#: "opencv" forces the OpenCV reader; anything else (or unset) lets `open_reader` choose.
DECODER_ENV = "EMOTION_BATCH_DECODER"

# Tolerance when comparing a frame time with a target: absorbs float noise in container timestamps.
EPS = 1e-4


class MediaError(Exception):
    """A file that cannot be decoded as the media its extension promises; the message names the cause."""

    #: The summary's `error_kind` (see schema.ERROR_KINDS).
    kind = "undecodable"
    #: Whether the message gains a clause on what the content looked like (the decoder's own words are vague).
    needs_hint = True


class NoFrames(MediaError):
    """A video container without a single decodable frame."""

    kind = "no_frames"
    needs_hint = False


class UnreadableMedia(MediaError):
    """The file could not even be read (or is empty); the message says why, no hint needed."""

    needs_hint = False


@dataclass
class Picture:
    """A decoded frame before pixel conversion: conversion is paid only for the frames that are sampled."""

    #: Position in presentation order, counting every frame of the stream.
    index: int
    #: Container time in seconds from the stream's start, or None when the container gives none.
    timestamp_s: float | None
    #: The frame as 8-bit BGR, or None for a damaged frame.
    image: Callable[[], np.ndarray | None]


class VideoReader(Protocol):
    #: Frame rate the container declares (0 when unknown); only a fallback for missing timestamps.
    meta_fps: float
    #: Frames the container declares (0 when unknown).
    frame_count: int
    #: Frames read so far (decoded or skipped).
    frames_read: int
    #: The sampler's rule: would a frame at time t, right after a frame at time `before`, be sampled? A reader
    #: may skip decoding a frame that would not and that no other frame refers to. None: never skip.
    skip_rule: Callable[[float, float], bool] | None

    def pictures(self) -> Iterator[Picture]: ...

    def close(self) -> None: ...


def _decoder_threads() -> int:
    try:
        return max(0, int(os.environ.get(DECODER_THREADS_ENV) or 0))
    except ValueError:
        return 0


def _usable_fps(fps: float) -> float:
    """The declared frame rate, or 0 when it is missing or absurd (AVI headers saying 0 or 90000)."""
    return fps if math.isfinite(fps) and 0 < fps < 1000 else 0.0


class OpenCVReader:
    """Every frame through cv2.VideoCapture."""

    def __init__(self, path: Path) -> None:
        threads = _decoder_threads()
        if threads:
            self._cap = cv2.VideoCapture(str(path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, threads])
        else:
            self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise MediaError("cannot open as a video (not a video, or a corrupt or unsupported one)")
        self.meta_fps = _usable_fps(self._cap.get(cv2.CAP_PROP_FPS))
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count > 0 else 0
        self.frames_read = 0
        self.skip_rule: Callable[[float, float], bool] | None = None

    def pictures(self) -> Iterator[Picture]:
        while self._cap.grab():
            self.frames_read += 1
            ts = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            yield Picture(self.frames_read - 1, ts, self._retrieve)

    def _retrieve(self) -> np.ndarray | None:
        ok, image = self._cap.retrieve()
        return image if ok else None

    def close(self) -> None:
        self._cap.release()


# How many recent packets are kept to find a packet's predecessor in presentation order; B-frames are reordered
# by a few frames only. An older predecessor found instead is safe: it widens the interval the rule looks at.
_RECENT = 32

# OpenCV turns frames upright by the stream's display matrix; the same rotation for PyAV frames.
_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


class PyAVReader:
    """Every packet through FFmpeg's decoder via PyAV, skipping unreferenced frames `skip_rule` does not want."""

    def __init__(self, path: Path) -> None:
        import av
        from av.video.reformatter import VideoReformatter

        self._av = av
        self._reformatter = VideoReformatter()
        self._container = av.open(str(path), metadata_errors="ignore")
        try:
            self._stream = self._container.streams.video[0]
        except IndexError:
            self._container.close()
            raise MediaError("no video stream") from None
        self._stream.thread_type = "NONE" if _decoder_threads() == 1 else "SLICE"
        self._codec = self._stream.codec_context
        self.meta_fps = _usable_fps(float(self._stream.average_rate or 0))
        self.frame_count = int(self._stream.frames or 0)
        self.frames_read = 0
        self.skip_rule: Callable[[float, float], bool] | None = None
        self._base = self._stream.start_time or 0
        base = self._stream.time_base
        self._tb = base.numerator / base.denominator if base else 0.0

    def _seconds(self, pts: int | None) -> float | None:
        # The same arithmetic as OpenCV's CAP_PROP_POS_MSEC / 1000, so both readers give identical floats.
        return None if pts is None or not self._tb else (pts - self._base) * self._tb * 1000.0 / 1000.0

    def pictures(self) -> Iterator[Picture]:
        pending: list[int] = []  # pts of packets read but not yet passed by the output (a min-heap)
        recent: list[int] = []  # the last packets' pts, sorted: a packet's predecessor in presentation order
        passed = 0  # packets whose frame lies before the last frame given out
        for packet in self._container.demux(self._stream):
            flush = packet.size == 0  # the demuxer's last packet: drains the decoder
            skippable = False
            if not flush and not packet.is_discard:  # discarded: decoded for reference, never shown
                self.frames_read += 1
                if packet.pts is None:
                    passed += 1
                else:
                    heapq.heappush(pending, packet.pts)
                    at = bisect.bisect_left(recent, packet.pts)
                    if at and self.skip_rule is not None:
                        before, now = self._seconds(recent[at - 1]), self._seconds(packet.pts)
                        skippable = before is not None and now is not None and not self.skip_rule(before, now)
                    recent.insert(at, packet.pts)
                    if len(recent) > _RECENT:
                        del recent[0]
            self._codec.skip_frame = "NONREF" if skippable else "DEFAULT"
            try:
                frames = packet.decode()
            except self._av.FFmpegError:
                continue  # a damaged packet: skip it, keep the timeline going (as grab() does)
            for frame in frames:
                while pending and (frame.pts is None or pending[0] < frame.pts):
                    heapq.heappop(pending)
                    passed += 1
                if pending and frame.pts is not None and pending[0] == frame.pts:
                    heapq.heappop(pending)
                index = passed
                passed += 1
                yield Picture(index, self._seconds(frame.pts), _converter(frame, self._reformatter))

    def close(self) -> None:
        self._container.close()


def _converter(frame, reformatter) -> Callable[[], np.ndarray | None]:
    def convert() -> np.ndarray | None:
        # One reformatter per reader keeps FFmpeg's scaler set up between frames: a frame's own to_ndarray()
        # sets up a new one each time, which doubled the cost (0.9 against 0.45 ms for 640x360; same pixels).
        image = reformatter.reformat(frame, format="bgr24").to_ndarray()
        turn = _ROTATIONS.get(round(-(frame.rotation or 0)) % 360)
        return cv2.rotate(image, turn) if turn is not None else image

    return convert


def _pyav_wanted(can_skip: bool) -> bool:
    if not can_skip or os.environ.get(DECODER_ENV, "").lower() == "opencv":
        return False
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def open_reader(path: Path, can_skip: bool) -> VideoReader:
    """The reader for `path`: PyAV when the caller can use skipping and PyAV opens the file, else OpenCV."""
    if _pyav_wanted(can_skip):
        try:
            return PyAVReader(path)
        except Exception as exc:  # noqa: BLE001 - any PyAV failure: OpenCV decides, with its own error
            log.debug("PyAV cannot open %s (%s); using OpenCV", path, exc)
    return OpenCVReader(path)
