"""One small picture of each person (track): the best crop of its face, for the report and for people to look at.

The best crop of a track is its sample with the highest `det_score * w * h` (a sure and large face). The frames
are decoded again, front to back as the analysis does (`media.decoding.open_reader`, never seeking), with the
frames no wanted sample needs skipped where the decoder allows it, and decoding stops after the last wanted
frame. Box coordinates in the rows are in the decoded (upright) frame's pixels, so they apply unchanged.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..files import partial_path, quick_replace
from ..media.decoding import EPS, open_reader
from ..vision.annotate import THUMBNAIL_SIZE as DEFAULT_SIZE
from ..vision.annotate import encode_jpeg
from ..vision.annotate import face_crop as crop
from .timeline import face_rows, safe_filename

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Pick:
    """The sample chosen to show a track."""

    shot: object
    track_id: int
    frame_index: int
    timestamp_s: float
    box: tuple[int, int, int, int]


def thumbnail_filename(source: str, shot: object, track_id: int) -> str:
    """`<flattened source>.track-<id>.jpg` (`.shot-<s>.track-<id>.jpg` with shots), named like the charts."""
    shot_part = "" if shot is None or shot != shot else f".shot-{shot}"
    return safe_filename(source, f"{shot_part}.track-{int(track_id)}.jpg")


def best_samples(rows: pd.DataFrame) -> list[Pick]:
    """Per track of one source's rows, the sample with the highest det_score x face area (earliest on a tie)."""
    faces = face_rows(rows)
    faces = faces[faces["w"].fillna(0).gt(0) & faces["h"].fillna(0).gt(0)]
    if faces.empty:
        return []
    faces = faces.assign(
        _score=faces["det_score"].fillna(0).astype(float)
        * faces["w"].astype(float)
        * faces["h"].astype(float)
    )
    faces["shot"] = faces["shot"].astype(object).where(faces["shot"].notna(), None)
    picks = []
    shot: Any
    track: Any
    for (shot, track), group in faces.groupby(["shot", "track_id"], sort=True, dropna=False):
        best = group.sort_values(["_score", "timestamp_s"], ascending=[False, True]).iloc[0]
        picks.append(
            Pick(
                None if shot is None or shot != shot else shot,
                int(track),
                int(best["frame_index"]),
                float(best["timestamp_s"]),
                (int(best["x"]), int(best["y"]), int(best["w"]), int(best["h"])),
            )
        )
    return picks


def _save(path: Path, image: np.ndarray) -> Path:
    return save_jpeg(path, encode_jpeg(image))


def save_jpeg(path: Path, data: bytes) -> Path:
    """Write JPEG bytes (e.g. a worker's `FileResult.thumbnails`) atomically."""
    with quick_replace(path) as partial:
        partial.write_bytes(data)
    return path


def place(kept: Path, target: Path) -> Path:
    """`target` made a second name of the JPEG `kept` (a hard link: on a slow file system creating a file costs
    far more than naming one), replacing whatever is there; a plain atomic copy where a link is not possible
    (another file system, or one without hard links). `kept` is only ever replaced, never rewritten in place,
    so the two names never show a half-written picture."""
    try:
        os.link(kept, target)
        return target
    except FileExistsError:
        partial = partial_path(target)
        with contextlib.suppress(OSError):
            partial.unlink()
        try:
            os.link(kept, partial)
            os.replace(partial, target)
            return target
        except OSError:
            pass
    except OSError:
        pass
    return save_jpeg(target, kept.read_bytes())


def _decode(path: Path, picks: list[Pick], skip: bool):
    wanted: dict[int, list[Pick]] = {}
    for pick in picks:
        wanted.setdefault(pick.frame_index, []).append(pick)
    times = sorted({p.timestamp_s for p in picks})
    last = max(wanted)
    reader = open_reader(path, can_skip=skip)

    def needed(before: float, now: float) -> bool:
        # Decode any frame near a wanted time; the others can only be skipped when nothing refers to them.
        return any(before - 0.05 <= t <= now + 0.05 + EPS for t in times)

    reader.skip_rule = needed if skip else None
    try:
        for picture in reader.pictures():
            if picture.index in wanted:
                image = picture.image()
                if image is not None:
                    for pick in wanted[picture.index]:
                        yield pick, image
            if picture.index >= last:
                break
    finally:
        reader.close()


def _frames(path: Path, picks: list[Pick]):
    """Yield (pick, image) for each pick, decoding the video once, front to back.

    Skipping is guided by the rows' timestamps; where they are not the container's (the sampler replaced
    missing or non-monotonic ones), a wanted frame may have been skipped: a second pass decodes everything.
    """
    missing = {id(p): p for p in picks}
    for pick, image in _decode(path, picks, skip=True):
        missing.pop(id(pick), None)
        yield pick, image
    if missing:
        yield from _decode(path, list(missing.values()), skip=False)


def write_thumbnails(
    media_path: str | os.PathLike[str],
    rows: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    media_type: str = "video",
    size: int = DEFAULT_SIZE,
) -> dict[tuple[object, int], Path]:
    """Write one JPEG per track of one file's rows into `out_dir`; returns {(shot, track_id): path}.

    `media_path` is the file the rows came from (the summary's `path`); `media_type` "video" or "image". Tracks
    whose frame cannot be decoded again (the file changed or vanished) get no thumbnail.
    """
    picks = best_samples(rows)
    if not picks:
        return {}
    source = str(rows["source"].iloc[0])
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(media_path)
    if media_type == "image":
        data = np.fromfile(path, dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        found = [(p, image) for p in picks] if image is not None else []
    else:
        found = _frames(path, picks)
    written: dict[tuple[object, int], Path] = {}
    for pick, image in found:
        target = folder / thumbnail_filename(source, pick.shot, pick.track_id)
        written[(pick.shot, pick.track_id)] = _save(target, crop(image, pick.box, size))
    return written
