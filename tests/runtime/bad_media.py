"""Real bad input files, written by the tests: every case of the "feed it garbage" list, plus the expectation.

Each factory writes one file (or link, or pipe) into a folder and returns nothing; `BAD_INPUTS` pairs each with
the status, error kind and message fragment the summary must show. Generated with OpenCV, Pillow and the
standard library only.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import media_factory as mf


@dataclass(frozen=True)
class BadInput:
    #: The file's source name in the outputs.
    source: str
    status: str
    error_kind: str | None
    #: A fragment the error message must contain (None: no error expected).
    message: str | None
    make: Callable[[Path, str, Path], None]  # (folder, name, moving-face video) -> writes the file


def _moving(video: Path) -> bytes:
    return video.read_bytes()


def _write(folder: Path, name: str, data: bytes) -> None:
    (folder / os.fsdecode(name) if isinstance(name, bytes) else folder / name).write_bytes(data)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (a decompression bomb's calling card)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose start-of-frame marker is rewritten to claim width x height."""
    _, data = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    buf = bytearray(data.tobytes())
    i = buf.find(b"\xff\xc0")
    buf[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(buf)


def _astronaut_bgr() -> np.ndarray:
    return mf.astronaut_bgr()


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def _cmyk_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(cv2.cvtColor(_astronaut_bgr(), cv2.COLOR_BGR2RGB)).convert("CMYK").save(
        buf, "JPEG", quality=95
    )
    return buf.getvalue()


def _exif_rotated_jpeg() -> bytes:
    """A portrait photo stored sideways, with EXIF orientation 6 ("rotate 90 clockwise to display")."""
    from PIL import Image

    upright = _astronaut_bgr()[:, 56:456]  # 512 high, 400 wide
    stored = np.ascontiguousarray(np.rot90(upright, k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB)).save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


def _boxes(data: bytes) -> dict[bytes, tuple[int, int]]:
    """Top-level MP4 boxes: kind -> (offset, size)."""
    out, off = {}, 0
    while off < len(data):
        size, kind = struct.unpack(">I4s", data[off : off + 8])
        out[kind] = (off, size)
        off += size
    return out


def _no_decodable_frames(video: Path) -> bytes:
    """The moving-face mp4 with its frame data (mdat payload) zeroed: the container opens, no frame decodes."""
    data = bytearray(video.read_bytes())
    off, size = _boxes(bytes(data))[b"mdat"]
    data[off + 8 : off + size] = bytes(size - 8)
    return bytes(data)


def _avi_with_zero_rate() -> bytes:
    """An MJPG AVI whose headers state a frame rate of 0 (dwMicroSecPerFrame, dwScale and dwRate all 0)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
        face = cv2.resize(_astronaut_bgr(), (240, 240))
        for i in range(20):
            canvas = np.full((240, 320, 3), 96, np.uint8)
            canvas[:, 4 * i : 4 * i + 240] = face
            writer.write(canvas)
        writer.release()
        data = bytearray(path.read_bytes())
    avih = data.find(b"avih")
    data[avih + 8 : avih + 12] = struct.pack("<I", 0)
    strh = data.find(b"strh")
    data[strh + 28 : strh + 36] = struct.pack("<II", 0, 0)
    return bytes(data)


def _mp4_with_zero_timescale(video: Path) -> bytes:
    """The moving-face mp4 with its media timescale set to 0, so the container's frame rate is meaningless."""
    buf = video.read_bytes()

    def rewrite(kind: bytes, payload: bytes) -> bytes:
        if kind in mf._CONTAINERS:
            inner = b"".join(rewrite(k, p) for k, p in mf._boxes(payload, 0, len(payload)))
            return mf._pack(kind, inner)
        if kind == b"mdhd":
            payload = payload[:12] + struct.pack(">I", 0) + payload[16:]
        return mf._pack(kind, payload)

    return b"".join(rewrite(k, p) if k == b"moov" else mf._pack(k, p) for k, p in mf._boxes(buf, 0, len(buf)))


def _symlink(target: str) -> Callable[[Path, str, Path], None]:
    def make(folder: Path, name: str, _video: Path) -> None:
        (folder / name).symlink_to(folder / target)

    return make


def _loop(folder: Path, name: str, _video: Path) -> None:
    (folder / name).symlink_to(folder / "loop_b.mp4")
    (folder / "loop_b.mp4").symlink_to(folder / name)


def _fifo(folder: Path, name: str, _video: Path) -> None:
    os.mkfifo(folder / name)


def _bytes(make: Callable[[Path], bytes] | Callable[[], bytes]) -> Callable[[Path, str, Path], None]:
    def writer(folder: Path, name: str, video: Path) -> None:
        try:
            data = make(video)  # type: ignore[call-arg]
        except TypeError:
            data = make()  # type: ignore[call-arg]
        (folder / name).write_bytes(data)

    return writer


def _copy_video(folder: Path, name: str, video: Path) -> None:
    shutil.copyfile(video, folder / name)


def _image(ext: str, convert: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path, str, Path], None]:
    def writer(folder: Path, name: str, _video: Path) -> None:
        (folder / name).write_bytes(_encode(ext, convert(_astronaut_bgr())))

    return writer


NON_UTF8_VIDEO = os.fsdecode(b"caf\xe9-latin1.mp4")
NON_UTF8_IMAGE = os.fsdecode(b"\xff\xfe-photo.jpg")

BAD_INPUTS: tuple[BadInput, ...] = (
    BadInput("empty.mp4", "error", "empty", "empty file (0 bytes)", _bytes(lambda: b"")),
    BadInput("empty.jpg", "error", "empty", "empty file (0 bytes)", _bytes(lambda: b"")),
    BadInput(
        "truncated.mp4", "error", "truncated", "incomplete MP4/MOV file: it is truncated: the 'mdat' box needs",
        _bytes(lambda v: v.read_bytes()[: v.stat().st_size // 2]),
    ),
    BadInput(
        "random_bytes.mov", "error", "undecodable",
        "cannot open as a video (not a video, or a corrupt or unsupported one); the content is not a recognised",
        _bytes(lambda: np.random.default_rng(7).bytes(200_000)),
    ),
    BadInput("text.jpg", "error", "undecodable", "not an image: the file contains plain text",
             _bytes(lambda: b"Shopping list:\n- eggs\n- flour\n" * 10)),
    BadInput("png_content.jpg", "ok", None, None, _image(".png", lambda im: im)),
    BadInput("jpeg_content.mp4", "ok", None, None, _image(".jpg", lambda im: im)),
    BadInput(
        "bomb.png", "error", "too_large",
        "image header claims 60000x60000 = 3600 megapixels, above the limit of 250 megapixels",
        _bytes(lambda: _png_header_only(60000, 60000)),
    ),
    BadInput(
        "bomb.jpg", "error", "too_large", "image header claims 20000x20000 = 400 megapixels",
        _bytes(lambda: _jpeg_claiming(20000, 20000)),
    ),
    BadInput("sixteen_bit.png", "ok", None, None, _image(".png", lambda im: im.astype(np.uint16) * 257)),
    BadInput("rgba.png", "ok", None, None,
             _image(".png", lambda im: np.dstack([im, np.full(im.shape[:2], 255, np.uint8)]))),
    BadInput("greyscale.jpg", "ok", None, None, _image(".jpg", lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY))),
    BadInput("cmyk.jpg", "ok", None, None, _bytes(_cmyk_jpeg)),
    BadInput("exif_rotated.jpg", "ok", None, None, _bytes(_exif_rotated_jpeg)),
    BadInput("no_frames.mp4", "error", "no_frames", "no decodable video frames", _bytes(_no_decodable_frames)),
    BadInput("zero_fps.avi", "ok", None, None, _bytes(_avi_with_zero_rate)),
    BadInput("zero_timescale.mp4", "ok", None, None, _bytes(_mp4_with_zero_timescale)),
    BadInput("broken_link.jpg", "error", "unreadable", "broken symlink", _symlink("does-not-exist.jpg")),
    BadInput("loop_a.mp4", "error", "unreadable", "symlink loop", _loop),
    BadInput("named_pipe.mp4", "error", "unreadable", "not a regular file (a named pipe)", _fifo),
    BadInput("café ☺ 日本.mp4", "ok", None, None, _copy_video),
    BadInput(r"caf\xe9-latin1.mp4", "ok", None, None,
             lambda folder, _name, video: shutil.copyfile(video, folder / NON_UTF8_VIDEO)),
    BadInput(r"\xff\xfe-photo.jpg", "ok", None, None,
             lambda folder, _name, _video: (folder / NON_UTF8_IMAGE).write_bytes(_encode(".jpg", _astronaut_bgr()))),
    BadInput("100% clip %d.mp4", "ok", None, None, _copy_video),
)  # fmt: skip

#: The symlink loop's second link is listed too (same message).
EXTRA_SOURCES = {"loop_b.mp4": ("error", "unreadable", "symlink loop")}


def write_bad_inputs(folder: Path, video: Path) -> dict[str, BadInput]:
    """Write every bad input into `folder`; return them by source name."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in BAD_INPUTS:
        case.make(folder, case.source, video)
    return {case.source: case for case in BAD_INPUTS}
