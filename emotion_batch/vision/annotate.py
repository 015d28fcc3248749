"""`--annotate DIR`: copies of the analysed images and sampled video frames with boxes and labels drawn.

The folder mirrors the input tree: an image keeps its relative path (and format), a video becomes a folder of
its sampled frames named by frame index, so a row of the CSV leads straight to its picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..files import write_atomically
from ..schema import EMOTIONS
from .detection import Detection

#: Face thumbnails (`face_crop`): edge in pixels (square), context kept around the box as a fraction of its
#: larger side on each side, JPEG quality.
THUMBNAIL_SIZE = 128
MARGIN = 0.25
JPEG_QUALITY = 88


def annotation_path(root: Path, source: str, media_type: str, frame_index: int) -> Path:
    """Where the annotated copy of one sampled frame goes."""
    base = root.joinpath(*source.split("/"))
    return base / f"frame_{frame_index:06d}.jpg" if media_type == "video" else base


def draw(
    image: np.ndarray, faces: Sequence[Detection], track_ids: Sequence[int | None], probs: np.ndarray
) -> np.ndarray:
    """A copy of `image` with each face's box and "#track emotion confidence" label ("emotion confidence" for a
    face without a track id)."""
    out = image.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(min(width, height) / 300))
    font_scale = max(0.45, min(width, height) / 900)
    for face, track, p in zip(faces, track_ids, probs):
        x0, y0 = round(face.x), round(face.y)
        x1, y1 = round(face.x + face.w), round(face.y + face.h)
        k = int(np.argmax(p))
        label = ("" if track is None else f"#{track} ") + f"{EMOTIONS[k]} {p[k]:.2f}"
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 220, 0), thickness)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        ty = y0 - base - 2 if y0 - th - base - 2 >= 0 else min(y1 + th + 2, height - base)
        cv2.rectangle(out, (x0, ty - th - 2), (x0 + tw + 2, ty + base), (0, 220, 0), cv2.FILLED)
        cv2.putText(
            out, label, (x0 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thickness, cv2.LINE_AA
        )
    return out


def save(path: Path, image: np.ndarray) -> None:
    """Write an annotated frame, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix.lower() or ".jpg", image)
    if not ok:
        raise OSError(f"could not write annotated image {path}")
    write_atomically(path, encoded.tobytes())


def relabel(
    path: Path, faces: Sequence[Detection], track_ids: Sequence[int | None], probs: np.ndarray
) -> None:
    """Draw boxes and labels on the unlabelled frame saved at `path` (a video's frame, saved before its track
    ids were final), in place."""
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:  # pragma: no cover - written by `save` a moment ago
        raise OSError(f"could not read annotated image {path}")
    save(path, draw(image, faces, track_ids, probs))


def face_crop(image: np.ndarray, box: tuple[int, int, int, int], size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """A square crop around the box with some context, padded at the frame's edges, resized to size x size."""
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * MARGIN)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x1, y1 = x0 + round(side), y0 + round(side)
    height, width = image.shape[:2]
    # Cut first, then pad only the piece: a box at the edge of a 4K frame never copies the whole frame.
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    piece = image[cy0 : max(cy0, cy1), cx0 : max(cx0, cx1)]
    pads = (cy0 - y0, y1 - max(cy0, cy1), cx0 - x0, x1 - max(cx0, cx1))
    if any(pads):
        piece = cv2.copyMakeBorder(piece, *pads, cv2.BORDER_CONSTANT, value=(40, 40, 40))
    interpolation = cv2.INTER_AREA if piece.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(piece, (size, size), interpolation=interpolation)


def encode_jpeg(image: np.ndarray) -> bytes:
    """A BGR image as JPEG bytes (`JPEG_QUALITY`)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - encoding a valid BGR array does not fail
        raise OSError("cannot encode a JPEG")
    return bytes(data.tobytes())
