"""File plumbing every layer shares: atomic writes and file digests. Standard library only.

An atomic write goes to a hidden temporary file beside its target (`.<name>.XXXX<suffix>`, so a leftover of a
killed run is never read as an input and is recognised for clean-up), which is flushed to disk and renamed over
the target only when the block completes; the rename itself is made durable by syncing the folder. A reader
therefore sees the old file or the new one, never a partial one, whatever happens (a crash, a kill, a full disk).

`quick_replace` is the same rename without the two fsyncs and without a random name, for the per-file outputs
that a run rebuilds from its durable state (timeline tables, subtitles, thumbnails, the report): a kill still
leaves the old file or the new one; only a power cut may lose the newest version, and the next run writes it
again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Suffix of temporary files; leftovers of killed runs are recognised (and removed) by it and `temp_prefix`.
TEMP_SUFFIX = ".tmp"

# Temporary files are created 0600 (mkstemp); what is published gets the permissions a plain open() would give
# it (0666 less the umask: 0644 under the usual 022), so a service user can read a fetched detector or a model.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def current_umask() -> int:
    """The process's umask now (Linux: read from /proc, without the race of setting it); else the one at import."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK


def published_mode() -> int:
    """The mode of a published file: what open() would create (0666 less the umask)."""
    return 0o666 & ~current_umask()


#: Suffix of `quick_replace`'s hidden file (`.<name>.partial`); leftovers are recognised (and removed) by it.
PARTIAL_SUFFIX = ".partial"


def temp_prefix(path: Path) -> str:
    """Hidden, so a temporary output inside an input folder is never picked up as an input."""
    return f".{path.name}."


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (the new directory entry reaches the disk)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class PendingFile:
    """The temporary file of an atomic write: write to `path`; `discard()` to leave the target as it is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.discarded = False

    def discard(self) -> None:
        self.discarded = True


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = TEMP_SUFFIX) -> Iterator[PendingFile]:
    """A temporary file beside `target` that replaces it (fsynced, then renamed) when the block completes.

    For writers that want a path (the charts, pyarrow). OSError propagates; the temporary file never stays.
    """
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(target), suffix=suffix, dir=target.parent)
    pending = PendingFile(Path(name))
    try:
        os.fchmod(fd, published_mode())
        os.close(fd)
        yield pending
        if not pending.discarded:
            with open(pending.path, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(pending.path, target)
            fsync_folder(target.parent)
    finally:
        pending.path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(
    target: str | os.PathLike[str], mode: str = "wb", suffix: str = TEMP_SUFFIX, **open_args: Any
) -> Iterator[IO[Any]]:
    """An open file whose content replaces `target` only if the block completes (see `atomic_path`)."""
    with atomic_path(target, suffix) as pending, open(pending.path, mode, **open_args) as fh:
        yield fh


def write_atomically(target: str | os.PathLike[str], data: bytes) -> None:
    """Replace `target` with `data` atomically."""
    with atomic_file(target) as fh:
        fh.write(data)


def partial_path(target: Path) -> Path:
    """The hidden name `quick_replace` writes `target` under before renaming it."""
    return target.with_name(f".{target.name}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def quick_replace(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden path beside `target` to write; renamed over `target` when the block completes (no fsync).

    The hidden file never stays: on an error it is removed and `target` is left as it was.
    """
    target = Path(target)
    partial = partial_path(target)
    try:
        yield partial
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def file_digest(file: str | os.PathLike[str] | io.BufferedIOBase, algorithm: str = "sha256") -> str:
    """Hex digest of a file's content (a path, or a binary file object read from its current position)."""
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as fh:
            return hashlib.file_digest(fh, algorithm).hexdigest()
    return hashlib.file_digest(file, algorithm).hexdigest()
