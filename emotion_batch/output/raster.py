"""A small raster canvas for the charts: lines and boxes drawn by OpenCV, texts by Pillow, saved as an RGB PNG.

Positions are in inches from the bottom left corner and sizes in points, as on a printed figure, so a chart's
layout reads like one; `dpi` turns them into pixels. Lines are antialiased and placed to a sixteenth of a pixel
(OpenCV's `shift`), boxes are filled on whole pixels (crisp edges), pictures are resized with area averaging.

The charts are drawn in the parent process while the workers analyse (`batch/drawing.py`), so what they cost
matters: a timeline of eight panels draws in a few milliseconds here, and PNG encoding is most of what is left.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Sub-pixel bits of line coordinates (OpenCV's `shift`): points are placed to 1/16 px.
_SHIFT = 4
#: PNG compression: level 1 is several times faster than the default 6, for files about 20% larger.
_PNG_COMPRESSION = 1
#: Where DejaVu Sans, the charts' font, is looked for after matplotlib's copy (when matplotlib is installed).
_SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/TTF", "/usr/share/fonts/dejavu")


def rgb(colour: str) -> tuple[int, int, int]:
    """'#rrggbb' as an (r, g, b) tuple."""
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def blend(colour: str, alpha: float, background: str = "#ffffff") -> str:
    """`colour` at opacity `alpha` over `background`, as one opaque colour."""
    fg, bg = rgb(colour), rgb(background)
    return "#" + "".join(f"{round(b + alpha * (f - b)):02x}" for f, b in zip(fg, bg))


@dataclass(frozen=True)
class Text:
    """A text of a chart. `x`, `y`: inches from the bottom left; `size`: points; `anchor`: Pillow's text anchor
    ("ls": left baseline, "rm": right middle, "mt": middle top, ...); `rotation`: degrees counter-clockwise, about
    the anchor point, which for rotated texts is the text's centre."""

    x: float
    y: float
    text: str
    size: float
    anchor: str = "ls"
    colour: str = "#000000"
    italic: bool = False
    rotation: int = 0


class Canvas:
    """A white picture `width` x `height` inches big at `dpi` pixels per inch.

    Draw lines and boxes in any order (later on top), add texts (drawn last, over everything) and `save`."""

    def __init__(self, width: float, height: float, dpi: int = 100) -> None:
        self.dpi = dpi
        self.pixels = np.full((round(height * dpi), round(width * dpi), 3), 255, np.uint8)
        self.texts: list[Text] = []

    def _px(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) inches from the bottom left as OpenCV's fixed-point pixel coordinates (y down)."""
        x = points[:, 0] * self.dpi
        y = self.pixels.shape[0] - points[:, 1] * self.dpi
        return np.round(np.column_stack([x, y]) * (1 << _SHIFT)).astype(np.int32)

    def lines(self, polylines: Iterable[np.ndarray], colour: str, width_pt: float) -> None:
        """Open polylines, each an (N, 2) array of inches, `width_pt` points wide (at least one pixel)."""
        import cv2

        drawn = [self._px(np.asarray(p, dtype=float)) for p in polylines if len(p) > 0]
        if not drawn:
            return
        thickness = max(1, round(width_pt * self.dpi / 72))
        cv2.polylines(self.pixels, drawn, False, rgb(colour), thickness, cv2.LINE_AA, _SHIFT)

    def boxes(self, boxes: np.ndarray, colour: str) -> None:
        """Filled boxes, rows of (left, bottom, right, top) in inches, snapped to whole pixels."""
        height = self.pixels.shape[0]
        for x0, y0, x1, y1 in np.asarray(boxes, dtype=float).reshape(-1, 4):
            left, right = round(x0 * self.dpi), round(x1 * self.dpi)
            top, bottom = height - round(y1 * self.dpi), height - round(y0 * self.dpi)
            if right > left and bottom > top:
                self.pixels[max(top, 0) : max(bottom, 0), max(left, 0) : max(right, 0)] = rgb(colour)

    def picture(self, image: np.ndarray, box: tuple[float, float, float, float]) -> None:
        """An RGB array fitted into `box` (left, bottom, width, height in inches), aspect kept and centred."""
        import cv2

        x, y, w, h = (v * self.dpi for v in box)
        scale = min(w / image.shape[1], h / image.shape[0])
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        fitted = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        left = round(x + (w - size[0]) / 2)
        top = round(self.pixels.shape[0] - (y + (h + size[1]) / 2))
        rows = slice(max(top, 0), min(top + size[1], self.pixels.shape[0]))
        cols = slice(max(left, 0), min(left + size[0], self.pixels.shape[1]))
        if rows.start >= rows.stop or cols.start >= cols.stop:  # wholly outside the picture
            return
        self.pixels[rows, cols] = fitted[
            rows.start - top : rows.stop - top, cols.start - left : cols.stop - left
        ]

    def text(self, text: Text) -> None:
        self.texts.append(text)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Draw the texts over the picture and write it as an RGB PNG."""
        from PIL import Image, ImageDraw

        image = Image.fromarray(self.pixels)
        draw = ImageDraw.Draw(image)
        height = image.height
        for text in self.texts:
            font = _font(text.size * self.dpi / 72, text.italic, threading.get_ident())
            xy = (text.x * self.dpi, height - text.y * self.dpi)
            if text.rotation:
                _paste_rotated(image, xy, text, font)
            else:
                draw.text(xy, text.text, fill=text.colour, font=font, anchor=text.anchor)
        out = Path(path)
        image.save(out, format="PNG", dpi=(self.dpi, self.dpi), compress_level=_PNG_COMPRESSION)
        return out


def _paste_rotated(image: Any, centre: tuple[float, float], text: Text, font: Any) -> None:
    """`text` rotated by its angle, centred on `centre` (pixels)."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(text.text)
    stamp = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(stamp).text((1 - left, 1 - top), text.text, fill=255, font=font)
    stamp = stamp.rotate(text.rotation, expand=True, resample=Image.Resampling.BICUBIC)
    where = (round(centre[0] - stamp.width / 2), round(centre[1] - stamp.height / 2))
    image.paste(Image.new("RGB", stamp.size, rgb(text.colour)), where, stamp)


def _font_file(italic: bool) -> str | None:
    """DejaVu Sans (matplotlib's default font, as the charts have always used), regular or oblique: matplotlib's
    copy when it is installed (found without importing it), else a system copy; None when there is neither."""
    name = "DejaVuSans-Oblique.ttf" if italic else "DejaVuSans.ttf"
    folders: list[str] = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        folders += [os.path.join(p, "mpl-data", "fonts", "ttf") for p in spec.submodule_search_locations]
    folders += list(_SYSTEM_FONT_DIRS)
    for folder in folders:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return _font_file(False) if italic else None


@functools.lru_cache(maxsize=64)
def _font(size_px: float, italic: bool, thread: int) -> Any:
    """The charts' font `size_px` pixels high, loaded once per size and thread (a FreeType face is not to be
    used by two threads at once). Without DejaVu Sans on the machine: Pillow's own scalable font."""
    from PIL import ImageFont

    path = _font_file(italic)
    if path is None:
        return ImageFont.load_default(size_px)
    return ImageFont.truetype(path, size_px)


def nice_ticks(stop: float, most: int = 9) -> tuple[list[float], list[str]]:
    """Tick values from 0 to `stop` at a round step (1, 2, 2.5 or 5 times a power of ten) giving at most `most`
    intervals, and their labels with one number of decimals, as a plotting library's default axis shows them."""
    if not stop > 0:
        return [0.0], ["0"]
    raw = stop / most
    power = 10.0 ** np.floor(np.log10(raw))
    step = next(s * power for s in (1, 2, 2.5, 5, 10) if s * power >= raw * (1 - 1e-9))
    values = [k * step for k in range(int(np.floor(stop / step + 1e-9)) + 1)]
    if float(step).is_integer():
        decimals = 0
    else:  # the step's own decimals: 0.5 -> 1, 0.25 -> 2
        decimals = -int(np.floor(np.log10(step) + 1e-9)) + (1 if abs(step / power - 2.5) < 1e-9 else 0)
    return values, [f"{v:.{decimals}f}" for v in values]


def legend(
    canvas: Canvas, entries: Sequence[tuple[str, str]], right: float, top: float, width_pt: float
) -> None:
    """Colour keys top right: `entries` of (label, colour), the first row `top` inches from the bottom, the
    keys' right end `right` inches from the left; each key a bar 20 points long and `width_pt` points thick."""
    thick = max(1, round(width_pt * canvas.dpi / 72))  # whole pixels, so that every key is as thick
    for k, (label, colour) in enumerate(entries):
        y = top - (13 + 15.3 * k) / 72
        low = round(y * canvas.dpi) - thick // 2
        box = [right - 77 / 72, low / canvas.dpi, right - 57 / 72, (low + thick) / canvas.dpi]
        canvas.boxes(np.array([box]), colour)
        canvas.text(Text(right - 49 / 72, y, label, 10, "lm"))
