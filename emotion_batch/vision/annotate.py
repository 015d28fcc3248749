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


def annotation_path(root: Path, source: str, media_type: str, frame_index: int) -> Path:
    """Where the annotated copy of one sampled frame goes."""
    base = root.joinpath(*source.split("/"))
    return base / f"frame_{frame_index:06d}.jpg" if media_type == "video" else base


def draw(
    image: np.ndarray, faces: Sequence[Detection], track_ids: Sequence[int], probs: np.ndarray
) -> np.ndarray:
    """A copy of `image` with each face's box and "#track emotion confidence" label."""
    out = image.copy()
    height, width = out.shape[:2]
    thickness = max(1, round(min(width, height) / 300))
    font_scale = max(0.45, min(width, height) / 900)
    for face, track, p in zip(faces, track_ids, probs):
        x0, y0 = round(face.x), round(face.y)
        x1, y1 = round(face.x + face.w), round(face.y + face.h)
        k = int(np.argmax(p))
        label = f"#{track} {EMOTIONS[k]} {p[k]:.2f}"
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
