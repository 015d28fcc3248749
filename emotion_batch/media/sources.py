"""Finding the input files: walk files and folders deterministically and name each file by its input root.

The extension only nominates a file as an image or a video; the real decode in `sampling` confirms it, so a
non-media file with a media extension is reported as an error for that file rather than crashing the run.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

# HEIC/HEIF (iPhone photos) and AVIF need a Pillow plugin; without one each such file is a clear per-file error.
# An animated GIF/WebP or a multi-page TIFF is analysed as a video (see inspection.inspect).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif"}
)
# .mts/.m2ts: AVCHD camcorders; .3gp/.3g2: older phones. (".ts" is left out: it names TypeScript sources too.)
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".mts", ".m2ts", ".3gp", ".3g2"}
)
#: The media type of a folder that could not be listed: analysing it reports it as an error (see inspection).
FOLDER = "folder"


@dataclass(frozen=True)
class Source:
    """One input file: where it is, how it is named in the outputs, and what its extension says it is."""

    path: Path
    #: Path relative to the input root it was found under, with forward slashes (valid UTF-8: see display_name).
    source: str
    #: "image", "video", None when the extension is not a media extension (the file is skipped), or FOLDER for
    #: a folder that could not be listed (reported as an error naming it, so its files are not silently lost).
    media_type: str | None

    @property
    def skip_reason(self) -> str | None:
        """Why the file is not analysed, or None when it is a media candidate."""
        if self.media_type is None:
            return f"not a media file extension ({self.path.suffix or 'no extension'})"
        return None


def display_name(text: str) -> str:
    r"""`text` as valid UTF-8 for outputs: bytes of a non-UTF-8 name become visible escapes (byte E9 -> "\xe9").

    File names on Linux are bytes; Python keeps undecodable ones as surrogates, which a UTF-8 CSV cannot hold.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def media_type_for(path: Path) -> str | None:
    """Classify a path by extension (case-insensitive): "image", "video" or None."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def _matches(source: str, patterns: Iterable[str]) -> bool:
    # A pattern may target the relative path ("clips/*.mp4", "*/raw/*") or just the file name ("*.MOV").
    name = PurePosixPath(source).name
    return any(fnmatch.fnmatchcase(source, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _real(path: Path) -> Path:
    """Resolve symlinks, tolerating loops (they are reported later, when the file is opened)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _walk(root: Path, ignore_dirs: frozenset[Path], unlisted: list[Path] | None = None) -> Iterable[Path]:
    """Yield files under root in sorted order, following directory symlinks once and skipping hidden entries.

    A folder that cannot be listed (no read or no search permission, an I/O error) is appended to `unlisted`
    and logged, instead of being left out silently as os.walk does.
    """
    seen: set[Path] = set()

    def failed(exc: OSError) -> None:
        folder = Path(exc.filename) if exc.filename is not None else root
        log.warning("cannot list folder %s: %s; its files are not analysed", folder, exc.strerror or exc)
        if unlisted is not None:
            unlisted.append(folder)

    for dirpath, dirnames, filenames in os.walk(root, onerror=failed, followlinks=True):
        here = Path(dirpath)
        real = _real(here)
        if real in seen or real in ignore_dirs:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name


def discover(
    paths: Sequence[str | os.PathLike[str]],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    ignore: Iterable[str | os.PathLike[str]] = (),
) -> list[Source]:
    """List the input files of a run, sorted by source name.

    Files named directly are always listed; folders are walked recursively (hidden files and folders are left
    out, as are any `ignore` paths such as the run's own outputs and chart folder, so a rerun never ingests its
    own charts). A listed file without a media extension is reported as skipped by the analysis.
    `include`/`exclude` are glob patterns matched against the relative source path or the file name. A file
    reached twice (two overlapping roots, or a symlink) is listed once. A folder that cannot be listed is
    listed as a Source of media type FOLDER named "<relative path>/", so the run reports it as an error.
    """
    ignored = frozenset(_real(Path(p)) for p in ignore)
    found: list[tuple[Path, Path, str]] = []  # (root, file, relative name)
    folders: list[tuple[Path, Path, str]] = []  # (root, unlisted folder, relative name)
    for raw in paths:
        root = Path(raw)
        if not root.exists() and not root.is_symlink():
            raise FileNotFoundError(f"input path does not exist: {root}")
        if root.is_dir():
            unlisted: list[Path] = []
            for file in _walk(root, ignored, unlisted):
                found.append((root, file, file.relative_to(root).as_posix()))
            for folder in unlisted:
                rel = folder.relative_to(root).as_posix() if folder != root else root.name or str(root)
                folders.append((root, folder, rel.rstrip("/") + "/"))
        else:
            found.append((root.parent, root, root.name))

    sources: dict[str, Source] = {}
    seen_files: set[Path] = set()
    for root, file, rel in found:
        real = _real(file)
        if real in seen_files or real in ignored:
            continue
        if include and not _matches(rel, include):
            continue
        if exclude and _matches(rel, exclude):
            continue
        seen_files.add(real)
        name = display_name(rel)
        if name in sources:
            # Same relative name under two different roots: qualify it with the root's folder name.
            name = display_name(f"{_real(root).name}/{rel}")
        sources[name] = Source(path=file.absolute(), source=name, media_type=media_type_for(file))
    for root, folder, rel in folders:
        name = display_name(rel)
        if name in sources:
            name = display_name(f"{_real(root).name}/{rel}")
        sources[name] = Source(path=folder.absolute(), source=name, media_type=FOLDER)
    return [sources[k] for k in sorted(sources)]
