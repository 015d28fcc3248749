"""Installing the YuNet face detector into the user cache: the only code in emotion-batch that uses the network.

The file is verified against a pinned sha256 before it is used, and written atomically (temporary file in the
same folder, then `os.replace`), so an interrupted or tampered download never leaves a file the detector would
load. The main command calls it on its first run, when no detector is installed (see
`detection.download_if_missing`); `$EMOTION_BATCH_DETECTOR_URL` replaces the official address (a mirror, an
air-gapped site's server, a loopback server in tests). Offline users install from a local copy (`--from PATH`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

import platformdirs

from ..files import atomic_path, file_digest, published_mode

YUNET_FILENAME = "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
YUNET_URL = "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx"
#: Size of the pinned file, for progress (the sha256 is what is checked).
YUNET_BYTES = 232_589
#: Overrides the download address (a mirror, a server on an air-gapped site, a loopback server in tests).
DETECTOR_URL_ENV = "EMOTION_BATCH_DETECTOR_URL"
#: Overrides the cache folder (useful for tests, containers and shared installs).
CACHE_DIR_ENV = "EMOTION_BATCH_CACHE_DIR"
# A hostile or broken server must not be able to fill the disk; YuNet is ~230 KB.
_MAX_BYTES = 64 * 1024 * 1024


class FetchError(Exception):
    """The detector file could not be installed; the message says why and what to do."""


def cache_dir() -> Path:
    """The folder emotion-batch keeps downloaded files in."""
    override = os.environ.get(CACHE_DIR_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("emotion-batch"))


def detector_url() -> str:
    """Where YuNet is downloaded from: $EMOTION_BATCH_DETECTOR_URL, else the official opencv_zoo address."""
    return os.environ.get(DETECTOR_URL_ENV, "").strip() or YUNET_URL


def offline_hint(url: str | None = None) -> str:
    """What to do without internet, in one line: the file to fetch elsewhere and the command to install it."""
    return (
        f"on a machine with internet download {url or detector_url()} (sha256 {YUNET_SHA256}), copy it here and "
        "run `emotion-batch models fetch --from FILE`"
    )


def terminal_progress(stream: TextIO | None = None, total: int = YUNET_BYTES) -> Callable[[int], None]:
    """A progress callback for `fetch_yunet` that redraws one line on a terminal (`\\r`, no new lines)."""
    out = stream if stream is not None else sys.stderr
    done = 0

    def update(nbytes: int) -> None:
        nonlocal done
        done += nbytes
        percent = min(100, done * 100 // max(1, total))
        out.write(f"\rdownloading the YuNet face detector: {done // 1000} of {total // 1000} kB ({percent}%)")
        out.flush()

    return update


def cached_yunet_path() -> Path:
    """Where `emotion-batch models fetch` installs YuNet and where detection looks for it."""
    return cache_dir() / YUNET_FILENAME


def _copy_verified(
    stream: BinaryIO, dest: Path, expected_sha256: str, progress: Callable[[int], None] | None
) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        writing = atomic_path(dest, suffix=".part")
        pending = writing.__enter__()
    except OSError as exc:
        raise FetchError(f"cannot write to {dest.parent}: {exc.strerror or exc}") from exc
    with contextlib.ExitStack() as stack:
        stack.push(writing)  # on success: fsync and rename into place; otherwise the temporary file goes
        total = 0
        with open(pending.path, "wb") as out:
            for chunk in iter(lambda: stream.read(1 << 16), b""):
                total += len(chunk)
                if total > _MAX_BYTES:
                    raise FetchError(f"refusing a file larger than {_MAX_BYTES // (1024 * 1024)} MiB")
                out.write(chunk)
                if progress:
                    progress(len(chunk))
        actual = file_digest(pending.path)
        if actual != expected_sha256:
            raise FetchError(
                f"sha256 mismatch: expected {expected_sha256}, got {actual} ({total} bytes); "
                "the file is corrupt or not the official YuNet model, so it was not installed"
            )


def _make_readable(path: Path) -> None:
    """Give a verified copy installed owner-only (mode 0600, by older versions) the mode of a published file,
    so a service user can read it; a copy someone else owns is left as it is."""
    with contextlib.suppress(OSError):
        info = path.stat()
        wanted = published_mode()
        if info.st_uid == os.geteuid() and (info.st_mode & 0o777) & wanted != wanted:
            os.chmod(path, (info.st_mode & 0o777) | wanted)


def fetch_yunet(
    *,
    url: str | None = None,
    from_file: str | os.PathLike[str] | None = None,
    dest: str | os.PathLike[str] | None = None,
    expected_sha256: str = YUNET_SHA256,
    timeout: float = 60.0,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Install YuNet into `dest` (default: the user cache) and return its path.

    Reads `from_file` when given, else downloads `url` (default: `detector_url()`). Does nothing when a verified
    copy is already there and `force` is false.
    """
    target = Path(dest) if dest is not None else cached_yunet_path()
    url = url or detector_url()
    if not force and target.is_file() and file_digest(target) == expected_sha256:
        _make_readable(target)
        return target
    try:
        if from_file is not None:
            with open(from_file, "rb") as fh:
                _copy_verified(fh, target, expected_sha256, progress)
        else:
            import urllib.request  # here, not at the top: every worker imports this module, few ever download

            # The user names the URL (--url, e.g. a mirror); a file: URL is as legitimate as --from.
            request = urllib.request.Request(url, headers={"User-Agent": "emotion-batch"})  # noqa: S310
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                _copy_verified(response, target, expected_sha256, progress)
    except FetchError:
        raise
    except OSError as exc:  # URLError, HTTPError, timeouts and file errors are all OSErrors
        where = from_file if from_file is not None else url
        raise FetchError(f"could not read {where}: {exc}") from exc
    return target
