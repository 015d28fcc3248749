"""Where live frames come from: a V4L2 camera, a stream URL or stdin, decoded with PyAV, reconnecting on drops.

`frames(spec, stop)` is the whole interface: a generator of `Arrival`s (a decoded frame and the monotonic time
its packet was read) that survives dropped connections with exponential backoff, and ends when `stop` is set,
when stdin ends, or (`give_up_s`) when the source stays unreachable for too long.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import av

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "tcp", "udp", "rtp", "srt")
#: Seconds to wait for a connection, and for the next packet on an open one, before it counts as dropped.
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0


class SourceError(Exception):
    """The source cannot be used (bad spec) or was lost for longer than allowed."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed SOURCE argument: what to open, how, and its name in the rows (credentials removed)."""

    kind: str  # "camera" | "stream" | "stdin"
    target: str
    name: str
    input_format: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def reconnects(self) -> bool:
        """Stdin cannot be reopened; cameras and streams can."""
        return self.kind != "stdin"


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_source(source: str, input_format: str | None = None) -> SourceSpec:
    """Classify SOURCE: `-` (stdin), /dev/videoN (V4L2), or a stream URL; anything else is refused."""
    if source == "-":
        return SourceSpec("stdin", source, "stdin", input_format)
    if re.fullmatch(r"/dev/video\d+", source):
        return SourceSpec("camera", source, source, input_format or "v4l2")
    scheme = urlsplit(source).scheme.lower()
    if scheme in STREAM_SCHEMES:
        options = {"fflags": "nobuffer", "analyzeduration": "1000000", "probesize": "1000000"}
        if scheme.startswith("rtsp"):
            options["rtsp_transport"] = "tcp"
        return SourceSpec("stream", source, _without_credentials(source), input_format, options)
    raise SourceError(
        f"unsupported live source {source!r}: give /dev/videoN, a stream URL "
        f"({', '.join(s + '://' for s in STREAM_SCHEMES)}) or - for an MPEG-TS or MJPEG stream on stdin"
    )


@dataclass
class Arrival:
    """A decoded frame and when its packet was read (time.monotonic()); `index` counts frames since start."""

    frame: av.VideoFrame
    arrived: float
    index: int


@dataclass
class SourceStats:
    """Counters the decoding thread keeps for the summary (plain ints: read from other threads)."""

    frames: int = 0
    connections: int = 0
    drops: int = 0


def _open(spec: SourceSpec) -> Any:
    if spec.kind == "stdin":
        return av.open(sys.stdin.buffer, mode="r", format=spec.input_format)
    return av.open(
        spec.target,
        mode="r",
        format=spec.input_format,
        options=spec.options,
        timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S),
    )


def frames(
    spec: SourceSpec,
    stop: threading.Event,
    stats: SourceStats | None = None,
    *,
    backoff_s: float = 0.5,
    max_backoff_s: float = 10.0,
    give_up_s: float | None = None,
) -> Iterator[Arrival]:
    """Decoded frames from `spec` until `stop` is set, reconnecting after a drop (backoff doubles, up to the max).

    Raises SourceError when no frame came for `give_up_s` seconds (None: keep trying for ever).
    """
    stats = stats if stats is not None else SourceStats()
    delay = backoff_s
    last_frame = time.monotonic()
    while not stop.is_set():
        try:
            container = _open(spec)
        except (av.FFmpegError, OSError) as exc:
            log.warning("cannot open %s: %s", spec.name, exc)
        else:
            stats.connections += 1
            log.info("connected to %s", spec.name)
            try:
                stream = container.streams.video[0]
                stream.thread_type = (
                    "SLICE"  # frame threading would hold frames back: latency, not throughput
                )
                for packet in container.demux(stream):
                    arrived = time.monotonic()
                    for frame in packet.decode():
                        yield Arrival(frame, arrived, stats.frames)
                        stats.frames += 1
                        last_frame = time.monotonic()
                        delay = backoff_s  # a frame came through: the next drop starts the backoff afresh
                    if stop.is_set():
                        return
                log.warning("%s ended", spec.name)
            except (av.FFmpegError, OSError, IndexError) as exc:
                log.warning("%s dropped: %s", spec.name, exc)
            finally:
                container.close()
            stats.drops += 1
        if not spec.reconnects or stop.is_set():
            return
        if give_up_s is not None and time.monotonic() - last_frame > give_up_s:
            raise SourceError(f"no frames from {spec.name} for {give_up_s:g} s; giving up")
        log.info("reconnecting to %s in %.1f s", spec.name, delay)
        stop.wait(delay)
        delay = min(max_backoff_s, delay * 2)
