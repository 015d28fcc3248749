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
to always use OpenCV. Before either, the container's streams are listed: a file without a real video stream
(audio only, or audio with cover art) is `NoFrames` ("no video stream"), and a cover-art stream (disposition
attached_pic) is never the one analysed: when a file has one, PyAV reads the real video stream by its index.

Animated GIF/WebP and multi-page TIFF files are "videos" too (inspection says so): `ImageSequenceReader` gives
their frames through Pillow, with times from the frames' durations (a TIFF page every second).
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from ..defaults import DECODER_THREADS_ENV
from .inspection import degenerate_size, full_resolution_pages, open_image, sniff

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

    def __init__(self, path: Path, stream_index: int | None = None) -> None:
        import av
        from av.video.reformatter import VideoReformatter

        self._av = av
        self._reformatter = VideoReformatter()
        self._container = open_container(path)
        streams = [s for s in self._container.streams.video if not _is_cover_art(s)]
        if stream_index is not None:
            streams = [s for s in streams if s.index == stream_index]
        if not streams:
            self._container.close()
            raise NoFrames("no video stream")
        self._stream = streams[0]
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


def open_container(path: Path) -> Any:
    """`av.open` for reading, tolerant of undecodable metadata on every PyAV version.

    PyAV up to 18 takes `metadata_errors="ignore"` (else a tag in a foreign encoding fails the whole file);
    PyAV 19 dropped the argument and always tolerates such tags.
    """
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except TypeError:  # PyAV >= 19: "open() got an unexpected keyword argument 'metadata_errors'"
        return av.open(str(path))


def _is_cover_art(stream) -> bool:
    """A still picture attached to the file (album or podcast cover, a thumbnail), not a video."""
    return bool(int(stream.disposition) & _ATTACHED_PIC)


_ATTACHED_PIC = 0x400  # AV_DISPOSITION_ATTACHED_PIC


@dataclass(frozen=True)
class StreamChoice:
    """What the container holds, as FFmpeg lists it before decoding."""

    #: Index of the real video stream to analyse, or None when there is none.
    video: int | None
    #: Whether the file also has cover-art streams (then only PyAV can be told which stream to read).
    has_cover_art: bool
    audio_streams: int

    def missing_video(self) -> str:
        what = f"{self.audio_streams} audio stream{'s' if self.audio_streams != 1 else ''}"
        if self.has_cover_art:
            what += " and cover art (a still picture, not analysed)"
        return (
            f"no video stream: the file holds only {what}"
            if self.audio_streams or self.has_cover_art
            else ("no video stream")
        )


def probe_streams(path: Path) -> StreamChoice | None:
    """The container's streams as PyAV lists them, or None when PyAV is missing or cannot open the file."""
    try:
        container = open_container(path)
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001 - any failure: the decoders decide, with their own error
        log.debug("PyAV cannot open %s (%s)", path, exc)
        return None
    try:
        video = container.streams.video
        real = [s for s in video if not _is_cover_art(s)]
        return StreamChoice(
            real[0].index if real else None, len(real) < len(video), len(container.streams.audio)
        )
    finally:
        container.close()


def _pyav_wanted(can_skip: bool) -> bool:
    if not can_skip or os.environ.get(DECODER_ENV, "").lower() == "opencv":
        return False
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def open_reader(path: Path, can_skip: bool) -> VideoReader:
    """The reader for `path`: Pillow for an animated image or multi-page TIFF; else PyAV when the caller can use
    skipping (or the file has cover art, which OpenCV might read instead of the video) and PyAV opens the file;
    else OpenCV. A container without a real video stream raises NoFrames."""
    with open(path, "rb") as fh:
        fmt = sniff(fh.read(4096))
    if fmt in ImageSequenceReader.FORMATS:
        return ImageSequenceReader(path, fmt)
    choice = probe_streams(path)
    if choice is not None and choice.video is None:
        raise NoFrames(choice.missing_video())
    if choice is not None and choice.has_cover_art:
        try:
            return PyAVReader(path, choice.video)
        except Exception as exc:  # noqa: BLE001 - OpenCV decides, with its own error
            log.debug("PyAV cannot read %s (%s); using OpenCV", path, exc)
    if _pyav_wanted(can_skip):
        try:
            return PyAVReader(path, choice.video if choice is not None else None)
        except Exception as exc:  # noqa: BLE001 - any PyAV failure: OpenCV decides, with its own error
            log.debug("PyAV cannot open %s (%s); using OpenCV", path, exc)
    return OpenCVReader(path)


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded picture (grey, BGR or BGRA; 8-bit, 16-bit, 32-bit integer or floating point) as 8-bit BGR.

    Floating-point pictures (32-bit float TIFFs from scientific cameras, HDR exports) are taken as linear
    intensities: when every finite value lies in [0, 1] (the usual convention) they are scaled by 255, otherwise
    the finite range [min, max] is stretched to [0, 255]. NaN and infinities become 0. Integer pictures deeper
    than 8 bits are scaled by their type's range, as OpenCV's IMREAD_COLOR does for 16-bit images.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating):
            values = image.astype(np.float64)
            finite = np.isfinite(values)
            values[~finite] = 0.0
            low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0, 0)
            if low >= 0.0 and high <= 1.0:
                scaled = values * 255.0
            elif high > low:
                scaled = (values - low) * (255.0 / (high - low))
            else:
                scaled = np.zeros_like(values)
            image = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        elif np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            shifted = image.astype(np.float64) - min(info.min, 0)
            image = np.clip(np.rint(shifted * (255.0 / (info.max - min(info.min, 0)))), 0, 255).astype(
                np.uint8
            )
        else:
            image = image.astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def pillow_to_bgr(image) -> np.ndarray:
    """A Pillow picture as 8-bit BGR (float and 16-bit modes through `to_bgr8`, alpha dropped)."""
    if image.mode in ("F", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image)
        if image.mode == "I" and array.size and array.min() >= 0 and array.max() <= 0xFFFF:
            array = array.astype(np.uint16)  # 16-bit data Pillow widened to 32 bits
        return to_bgr8(array)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    array = np.asarray(image)
    return to_bgr8(array if array.ndim == 2 else np.ascontiguousarray(array[:, :, ::-1]))


class ImageSequenceReader:
    """The frames of an animated GIF or WebP, or the pages of a multi-page TIFF, through Pillow.

    A GIF or WebP frame's time is the sum of the durations of the frames before it (a duration of 10 ms or less
    counts as 100 ms, as web browsers show it); TIFF pages carry no time, so page k is at k seconds. Thumbnails,
    pyramid levels and masks in a TIFF are not pages of their own (see inspection.full_resolution_pages).
    """

    FORMATS = frozenset({"GIF", "WebP", "TIFF"})
    #: A duration at or below this (ms) is shown as DEFAULT_DURATION_MS by browsers; GIFs often say 0.
    MIN_DURATION_MS = 10
    DEFAULT_DURATION_MS = 100
    PAGE_INTERVAL_S = 1.0

    def __init__(self, path: Path, fmt: str) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        try:
            self._image = open_image(self._fh, fmt)
            if self._image is None:
                raise MediaError(f"cannot decode {fmt} frames: this Pillow has no {fmt} support")
            n = int(getattr(self._image, "n_frames", 1))
            self._frames = full_resolution_pages(self._image) if fmt == "TIFF" else list(range(n))
        except MediaError:
            self._fh.close()
            raise
        except Exception as exc:
            self._fh.close()
            raise MediaError(f"cannot read the frames of this {fmt} file ({exc})") from exc
        self._timed = fmt != "TIFF"
        self._webp = _webp_durations(path) if fmt == "WebP" else None
        self.frame_count = len(self._frames)
        self.meta_fps = 1.0 / self.PAGE_INTERVAL_S
        #: The sequence's length in seconds: the last frame's time plus its duration.
        self.end_s = self.frame_count * self.PAGE_INTERVAL_S
        if self._timed:
            total = sum(self._duration_ms(i) for i in self._frames)
            self.meta_fps = _usable_fps(1000.0 * self.frame_count / total) if total else 0.0
            self.end_s = total / 1000.0
        self.frames_read = 0
        self.skip_rule: Callable[[float, float], bool] | None = None

    def _duration_ms(self, frame: int) -> float:
        self._image.seek(frame)
        if self._webp is not None and frame < len(self._webp):
            duration: object = self._webp[frame]  # Pillow tells a WebP frame's duration only once decoded
        else:
            duration = self._image.info.get("duration") or 0
        try:
            value = float(duration)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            value = 0.0
        return value if value > self.MIN_DURATION_MS else float(self.DEFAULT_DURATION_MS)

    def pictures(self) -> Iterator[Picture]:
        elapsed_ms = 0.0
        for position, frame in enumerate(self._frames):
            try:
                duration = self._duration_ms(frame)  # seeks to the frame
            except Exception as exc:  # noqa: BLE001 - a damaged frame ends the sequence, as in a cut video
                log.debug("cannot seek to frame %d (%s)", frame, exc)
                return
            self.frames_read += 1
            ts = elapsed_ms / 1000.0 if self._timed else position * self.PAGE_INTERVAL_S
            yield Picture(position, ts, self._current)
            elapsed_ms += duration

    def _current(self) -> np.ndarray | None:
        try:
            return pillow_to_bgr(self._image)
        except Exception as exc:  # noqa: BLE001 - a damaged frame: skipped, as a video's damaged frame
            log.debug("cannot decode a frame (%s)", exc)
            return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._image.close()
        self._fh.close()


def _webp_durations(path: Path) -> list[int]:
    """The durations (ms) of an animated WebP's frames, from its ANMF chunks (RIFF), in order."""
    durations: list[int] = []
    with open(path, "rb") as fh:
        header = fh.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WEBP":
            return durations
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return durations
            kind, size = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if kind == b"ANMF":
                payload = fh.read(16)
                if len(payload) < 15:
                    return durations
                durations.append(int.from_bytes(payload[12:15], "little"))
                fh.seek(size + (size & 1) - len(payload), os.SEEK_CUR)
            else:
                fh.seek(size + (size & 1), os.SEEK_CUR)


def check_frame_size(image: np.ndarray) -> None:
    """Raise MediaError for a frame no face fits in (see inspection.degenerate_size)."""
    height, width = image.shape[:2]
    if problem := degenerate_size(width, height):
        error = MediaError(problem)
        error.needs_hint = False
        raise error
