"""Odd but legitimate inputs of issue #14, built at test time with ffmpeg, OpenCV and Pillow."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .media_factory import astronaut_bgr

#: Frame durations (ms) of the animated GIF and WebP; at the default 2 fps frames 0 and 2 are sampled.
ANIMATION_DURATIONS_MS = (200, 300, 500)


def ffmpeg(*args: str | Path) -> None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("ffmpeg is not installed")
    subprocess.run([exe, "-v", "error", "-y", *map(str, args)], check=True, capture_output=True, timeout=120)


def _astronaut_frames() -> list[Image.Image]:
    rgb = Image.fromarray(np.ascontiguousarray(astronaut_bgr()[:, :, ::-1]))
    return [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), rgb]


def write_strip(path: Path, width: int = 2000, height: int = 1) -> None:
    cv2.imwrite(str(path), np.full((height, width, 3), 128, np.uint8))


def write_float_tiff(path: Path, scale: float = 1.0) -> None:
    """The astronaut as 32-bit float RGB, values in [0, scale] (OpenCV's IMREAD_COLOR refuses it)."""
    image = astronaut_bgr().astype(np.float32) * (scale / 255.0)
    assert cv2.imwrite(str(path), image)


def write_animation(path: Path, fmt: str) -> None:
    first, *rest = _astronaut_frames()
    first.save(
        path, format=fmt, save_all=True, append_images=rest, duration=list(ANIMATION_DURATIONS_MS), loop=0
    )


def write_multipage_tiff(path: Path) -> None:
    """Three astronaut pages plus a 64x64 thumbnail page marked reduced-resolution (NewSubfileType 1)."""
    from PIL import TiffImagePlugin

    pages = [*_astronaut_frames(), _astronaut_frames()[0].resize((64, 64))]
    with TiffImagePlugin.AppendingTiffWriter(path, new=True) as tf:
        for page, kind in zip(pages, (0, 0, 0, 1)):
            info = TiffImagePlugin.ImageFileDirectory_v2()
            info[254] = kind
            page.save(tf, format="TIFF", tiffinfo=info)
            tf.newFrame()


def write_test_video(path: Path, seconds: float = 2, size: str = "160x120", rate: int = 10) -> None:
    ffmpeg("-f", "lavfi", "-i", f"testsrc=d={seconds}:s={size}:r={rate}", "-pix_fmt", "yuv420p", path)


def write_audio_only_mp4(path: Path) -> None:
    ffmpeg("-f", "lavfi", "-i", "sine=d=2", "-c:a", "aac", "-f", "mp4", path)


def write_cover_art_mp4(path: Path, with_video: Path | None, work: Path) -> None:
    """Audio with an attached picture (a podcast or a song), plus the video `with_video` when given."""
    cover = work / "cover.png"
    cv2.imwrite(str(cover), astronaut_bgr())
    audio = work / "audio.m4a"
    write_audio_only_mp4(audio)
    if with_video is None:
        ffmpeg("-i", audio, "-i", cover, "-map", "0", "-map", "1", "-c:a", "copy", "-c:v", "png",
               "-disposition:v:0", "attached_pic", "-f", "mp4", path)  # fmt: skip
    else:
        ffmpeg("-i", cover, "-i", with_video, "-i", audio, "-map", "0", "-map", "1:v", "-map", "2:a",
               "-c:v:0", "png", "-c:v:1", "copy", "-c:a", "copy", "-disposition:v:0", "attached_pic",
               "-f", "mp4", path)  # fmt: skip


def write_m2ts(path: Path, video: Path) -> None:
    """An AVCHD-style BDAV transport stream (192-byte packets), as camcorders write .MTS files."""
    ffmpeg("-i", video, "-c", "copy", "-f", "mpegts", "-mpegts_m2ts_mode", "1", path)


def write_3gp(path: Path, video: Path) -> None:
    ffmpeg("-i", video, "-c:v", "copy", "-f", "3gp", path)


def write_heic(path: Path) -> bool:
    """The astronaut as HEIC when pillow-heif is installed; False (nothing written) otherwise."""
    try:
        import pillow_heif
    except ImportError:
        return False
    image = pillow_heif.from_pillow(_astronaut_frames()[0])
    image.save(str(path), quality=90)
    return True


def write_fake_heic(path: Path) -> None:
    """A file whose header is a HEIF photo's (ftyp heic), for the path where no decoder is installed."""
    ftyp = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    path.write_bytes(ftyp + b"\x00" * 256)
