"""What a file really is, checked before any decoder sees it.

Decoders give vague errors ("cannot open") or worse: OpenCV's VideoCapture crashes the process on a file name
that is not valid UTF-8, blocks forever on a named pipe, and a small image file whose header claims 40000x40000
pixels makes it allocate gigabytes. So each file is first opened here without blocking, fingerprinted (size,
mtime, sha256: its identity for the state store), sniffed by its magic bytes, and for images measured from the
header. The result is either a specific `FileProblem` naming the cause, or what the decoder may safely do.
Only the standard library and Pillow's header parsers are used, so this runs before OpenCV touches the file.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..defaults import DEFAULT_MAX_PIXELS
from ..files import file_digest

#: How many leading bytes are sniffed.
HEAD_BYTES = 64 * 1024

IMAGE_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WebP", "TIFF", "GIF", "HEIF", "AVIF"})
VIDEO_FORMATS = frozenset({"MP4/MOV", "Matroska/WebM", "AVI", "MPEG program stream", "MPEG transport stream"})
#: Image formats that can hold several frames (animation) or pages; such a file is analysed as a video.
MULTI_FRAME_FORMATS = frozenset({"GIF", "WebP", "TIFF"})
# ISO base media files whose major brand says "still image" (HEIF/AVIF), not video.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
#: The package that decodes HEIF (and where Pillow has no AVIF of its own, AVIF) photos.
HEIF_PACKAGE = "pillow-heif"
#: Frames whose sides are further apart than this to 1 are refused: no face fits in such a strip, and the
#: detector's downscaling cannot shrink one that is a pixel or two high (OpenCV asserts). Real panoramas stay under
#: 10:1. Small but well-shaped pictures (icons, thumbnails) are analysed as usual (no face is found in them).
MAX_ASPECT = 16
_BMP_HEADER_SIZES = frozenset(struct.pack("<I", n) for n in (12, 40, 52, 56, 64, 108, 124))
_ISO_TOP_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"moof"})


class FileProblem(Exception):
    """A file that will not be analysed, with a machine-readable `kind` and a message naming the cause."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class FileIdentity:
    """What the state store compares to decide whether a file changed since it was analysed."""

    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class Inspection:
    identity: FileIdentity
    #: "image" or "video": the content decides when it is recognised, else the extension.
    media_type: str
    #: The recognised container or image format ("PNG", "MP4/MOV", ...), or None.
    format: str | None
    #: Things worth telling the user that do not stop the analysis (e.g. a misleading extension).
    notes: tuple[str, ...] = field(default_factory=tuple)


def _kind_of_node(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _open_without_blocking(path: Path) -> int:
    """Open for reading; never blocks (a FIFO opened O_NONBLOCK returns at once) and names the cause on failure."""
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileProblem("unreadable", "symlink loop (too many levels of symbolic links)") from exc
        if exc.errno == errno.ENOENT and os.path.islink(path):
            target = os.readlink(path)
            raise FileProblem(
                "unreadable", f"broken symlink (its target {os.fsdecode(target)!r} does not exist)"
            ) from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise FileProblem("unreadable", "permission denied: the file cannot be read") from exc
        raise FileProblem("unreadable", f"cannot read file: {exc.strerror or exc}") from exc


def sniff(head: bytes) -> str | None:
    """The format the leading bytes announce, "text" for plain text, or None when unrecognised."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "AVI"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "Matroska/WebM"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "MPEG program stream"
    if len(head) >= 8 and head[4:8] in _ISO_TOP_BOXES:
        if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
            return "HEIF"
        if head[4:8] == b"ftyp" and head[8:12] in _AVIF_BRANDS:
            return "AVIF"
        return "MP4/MOV"
    if _looks_like_text(head):
        return "text"
    # Weak signatures, checked only once the content is known to be binary.
    if head.startswith(b"BM") and len(head) >= 26 and head[14:18] in _BMP_HEADER_SIZES:
        return "BMP"
    if len(head) >= 377 and head[0] == 0x47 and head[188] == 0x47 and head[376] == 0x47:
        return "MPEG transport stream"
    if len(head) >= 389 and head[4] == 0x47 and head[196] == 0x47 and head[388] == 0x47:
        return "MPEG transport stream"  # BDAV (.m2ts/.mts): each 188-byte packet after a 4-byte time code
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not merely a multi-byte character cut by the sniffing window
            return False
        text = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
    return printable >= 0.97 * max(1, len(text))


# --- image sizes from headers ----------------------------------------------------------------------------------
def _read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def image_size(fh: BinaryIO, fmt: str) -> tuple[int, int] | None:
    """(width, height) as the image header states it, without decoding; None when it cannot be told.

    Pillow's format plugin for the sniffed format parses the header only (pixels are read on `load()`, which is
    never called). The plugin class is used directly: `Image.open` would refuse a header above Pillow's own
    decompression-bomb limit before this module could apply `--max-pixels`.
    """
    opener = _pillow_opener(fmt)
    if opener is None:
        return None
    try:
        fh.seek(0)
        with opener(fh) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - any parse failure: the size is unknown, the decoder decides
        return None
    return int(width), int(height)


def _pillow_opener(fmt: str) -> Any:
    from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

    openers: dict[str, Any] = {
        "JPEG": JpegImagePlugin.JpegImageFile,
        "PNG": PngImagePlugin.PngImageFile,
        "GIF": GifImagePlugin.GifImageFile,
        "BMP": BmpImagePlugin.BmpImageFile,
        "TIFF": TiffImagePlugin.TiffImageFile,
    }
    if fmt == "WebP":
        try:
            from PIL import WebPImagePlugin
        except ImportError:  # a Pillow built without WebP
            return None
        return WebPImagePlugin.WebPImageFile
    if fmt in ("HEIF", "AVIF"):
        return heif_opener(fmt)
    return openers.get(fmt)


def open_image(fh: BinaryIO, fmt: str) -> Any:
    """The file as a Pillow image of format `fmt` (header parsed, pixels not yet read), or None if unsupported.

    The plugin class is used directly, so Pillow's own decompression-bomb limit does not apply: `inspect` has
    already applied --max-pixels.
    """
    opener = _pillow_opener(fmt)
    if opener is None:
        return None
    fh.seek(0)
    return opener(fh)


def heif_opener(fmt: str) -> Any:
    """Pillow's image class for a HEIF or AVIF file: Pillow's own AVIF plugin, else pillow-heif's; or None."""
    if fmt == "AVIF":
        try:
            from PIL import AvifImagePlugin, features

            if features.check("avif"):
                return AvifImagePlugin.AvifImageFile
        except ImportError:
            pass
    try:
        from pillow_heif.as_plugin import HeifImageFile  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return HeifImageFile


def unsupported_still(fmt: str) -> str | None:
    """Why a HEIF/AVIF photo cannot be decoded here (the package to install), or None when it can."""
    if heif_opener(fmt) is not None:
        return None
    return (
        f"{fmt} photo (HEIC/HEIF from a phone, or AVIF): decoding it needs the {HEIF_PACKAGE} package, which is "
        f"not installed (pip install {HEIF_PACKAGE})"
    )


def frame_count(fh: BinaryIO, fmt: str) -> int:
    """How many frames (GIF, WebP animation) or full-resolution pages (TIFF) an image file holds; 1 if unsure.

    TIFF pages marked as reduced-resolution copies or masks (NewSubfileType bits 0 and 2: thumbnails, pyramid
    levels) are not counted: they are not pictures of their own.
    """
    if fmt not in MULTI_FRAME_FORMATS:
        return 1
    opener = _pillow_opener(fmt)
    if opener is None:
        return 1
    try:
        fh.seek(0)
        with opener(fh) as image:
            if not getattr(image, "is_animated", False):
                return 1
            if fmt != "TIFF":
                return int(getattr(image, "n_frames", 2))
            return len(full_resolution_pages(image))
    except Exception:  # noqa: BLE001 - a damaged file: treat it as one picture, the decoder decides
        return 1


def full_resolution_pages(image: Any) -> list[int]:
    """The indices of a multi-page TIFF's pages that are pictures (not thumbnails, pyramid levels or masks)."""
    pages = []
    for page in range(int(getattr(image, "n_frames", 1))):
        image.seek(page)
        if not int(image.tag_v2.get(254, 0)) & 0b101:
            pages.append(page)
    return pages


def degenerate_size(width: int, height: int) -> str | None:
    """Why a frame of this size cannot be analysed (a strip far more elongated than any picture), or None."""
    if min(width, height) < 1 or max(width, height) > MAX_ASPECT * min(width, height):
        return (
            f"degenerate frame size {width}x{height}: its sides are more than {MAX_ASPECT}:1 apart, a strip "
            "rather than a picture (no face fits in it)"
        )
    return None


def unlisted_folder_problem(path: Path) -> FileProblem:
    """The error for a folder the walk could not list (see sources.FOLDER)."""
    try:
        os.listdir(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
    else:
        reason = "it could not be listed when the inputs were collected"
    return FileProblem("unreadable", f"folder cannot be listed ({reason}): the files in it were not analysed")


# --- containers ------------------------------------------------------------------------------------------------
def iso_structure_problem(fh: BinaryIO, size: int) -> str | None:
    """Why an MP4/MOV file is incomplete (a box running past the end, or no 'moov' index), else None."""
    offset, seen = 0, set()
    while offset < size:
        header = _read_at(fh, offset, 16)
        if len(header) < 8:
            return f"it ends inside a box header at byte {offset} (cut off mid-file?)"
        box_size, kind = struct.unpack(">I4s", header[:8])
        name = kind.decode("latin-1")
        if box_size == 1:
            if len(header) < 16:
                return f"it ends inside the '{name}' box header (cut off mid-file?)"
            (box_size,) = struct.unpack(">Q", header[8:16])
        elif box_size == 0:  # the last box runs to the end of the file
            box_size = size - offset
        if box_size < 8:
            return f"its '{name}' box at byte {offset} has an impossible size ({box_size})"
        if offset + box_size > size:
            return (
                f"it is truncated: the '{name}' box needs {box_size} bytes from byte {offset} but the file "
                f"ends after {size - offset} (an interrupted copy, or a recording still being written?)"
            )
        seen.add(kind)
        offset += box_size
    if b"moov" not in seen:
        return "it has no 'moov' index (an incomplete recording or an interrupted copy?)"
    return None


def _describe_format(fmt: str | None) -> str:
    if fmt is None:
        return "not a recognised image or video format"
    if fmt == "text":
        return "plain text, not media"
    return f"{fmt} data"


def hint_for_decode_failure(inspection: Inspection | None) -> str:
    """A short clause explaining a decoder failure from what the content looked like."""
    if inspection is None or inspection.format is None:
        return "the content is not a recognised image or video format"
    return f"the content looks like {_describe_format(inspection.format)}"


def inspect(path: Path, media_type: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Inspection:
    """Open, fingerprint and sniff `path` (named as `media_type` by its extension); raise FileProblem if unusable.

    An animated GIF or WebP, or a TIFF of several full-resolution pages, is reported as media type "video": its
    frames are sampled like a video's (see decoding.ImageSequenceReader), with a note saying so.
    """
    if media_type == "folder":
        raise unlisted_folder_problem(path)
    fd = _open_without_blocking(path)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem("unreadable", f"not a regular file ({_kind_of_node(info.st_mode)})")
        if info.st_size == 0:
            raise FileProblem("empty", "empty file (0 bytes)")
        try:
            head = fh.read(HEAD_BYTES)
            fh.seek(0)
            digest = file_digest(fh)
        except OSError as exc:
            raise FileProblem("unreadable", f"cannot read file: {exc.strerror or exc}") from exc
        identity = FileIdentity(info.st_size, info.st_mtime_ns, digest)

        fmt = sniff(head)
        notes: list[str] = []
        if fmt == "text":
            raise FileProblem("undecodable", f"not {'an image' if media_type == 'image' else 'a video'}: "
                              "the file contains plain text")  # fmt: skip
        if fmt in ("HEIF", "AVIF") and (problem := unsupported_still(fmt)):
            raise FileProblem("undecodable", problem)
        actual = "image" if fmt in IMAGE_FORMATS else "video" if fmt in VIDEO_FORMATS else media_type
        if actual != media_type:
            notes.append(f"the content is {fmt} although the extension {path.suffix} says {media_type}; "
                         f"analysed as {'an image' if actual == 'image' else 'a video'}")  # fmt: skip
        if actual == "image" and fmt is not None:
            size = image_size(fh, fmt)
            if size is not None and size[0] * size[1] > max_pixels:
                width, height = size
                raise FileProblem(
                    "too_large",
                    f"image header claims {width}x{height} = {width * height / 1e6:.0f} megapixels, above the "
                    f"limit of {max_pixels / 1e6:g} megapixels (--max-pixels); not decoded (decompression "
                    "bomb protection)",
                )
            if size is not None and (problem := degenerate_size(*size)):
                raise FileProblem("undecodable", problem)
            frames = frame_count(fh, fmt)
            if frames > 1:
                actual = "video"
                what = "pages" if fmt == "TIFF" else "frames"
                timing = "one second apart" if fmt == "TIFF" else "timed by its frame durations"
                notes.append(f"{'multi-page' if fmt == 'TIFF' else 'animated'} {fmt} with {frames} {what}: "
                             f"analysed as a video (its {what} {timing})")  # fmt: skip
        if fmt == "MP4/MOV":
            problem = iso_structure_problem(fh, info.st_size)
            if problem:
                raise FileProblem("truncated", f"incomplete MP4/MOV file: {problem}")
        return Inspection(identity, actual, fmt, tuple(notes))


def changed_since(path: Path, identity: FileIdentity) -> bool:
    """True when the file's size or modification time differs from `identity` (it was written meanwhile)."""
    try:
        info = os.stat(path)
    except OSError:
        return True
    return (info.st_size, info.st_mtime_ns) != (identity.size, identity.mtime_ns)


_SAFE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+,=@/ ")


def needs_safe_alias(path: Path) -> bool:
    """Whether a video path must be hidden behind an ASCII alias before OpenCV sees it.

    OpenCV crashes on names that are not valid UTF-8, and FFmpeg gives some characters meaning ('%' patterns,
    ':' protocols), so anything beyond plain ASCII letters, digits and a few separators gets an alias.
    """
    return not set(str(path)) <= _SAFE_NAME_CHARS


@contextmanager
def decoder_path(path: Path) -> Iterator[Path]:
    """A path the video decoder can open safely: `path` itself, or an ASCII-named symlink to it in a private
    temporary folder (mode 0700), removed afterwards."""
    if not needs_safe_alias(path):
        yield path
        return
    folder = tempfile.mkdtemp(prefix="emotion-batch-")
    suffix = "".join(c for c in path.suffix.lower() if c.isascii() and (c.isalnum() or c == "."))
    alias = Path(folder) / f"input{suffix}"
    try:
        os.symlink(os.path.abspath(path), alias)
        yield alias
    finally:
        try:
            alias.unlink(missing_ok=True)
        finally:
            os.rmdir(folder)
