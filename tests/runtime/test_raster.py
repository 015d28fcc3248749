"""The charts' canvas (output/raster.py): where things land, in which colour, and the PNG it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotion_batch.output import raster
from emotion_batch.output.raster import Canvas, Text, blend, nice_ticks, rgb


@pytest.mark.parametrize(
    ("stop", "values", "labels"),
    [
        (19.5, [0, 2.5, 5, 7.5, 10, 12.5, 15, 17.5], ["0.0", "2.5", "5.0", "7.5", "10.0"]),
        (10.0, [0, 2, 4, 6, 8, 10], ["0", "2", "4", "6", "8", "10"]),
        (3600.0, [0, 500, 1000, 1500, 2000, 2500, 3000, 3500], None),
        (0.9, [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], None),
        (2.0, [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], ["0.00", "0.25", "0.50", "0.75"]),
        (0.0, [0], ["0"]),
    ],
)  # fmt: skip
def test_nice_ticks(stop: float, values: list[float], labels: list[str] | None) -> None:
    got, got_labels = nice_ticks(stop)
    assert got == pytest.approx(values)
    assert len(got) - 1 <= 9 and got[-1] <= stop + 1e-9
    if labels is not None:  # the first labels: one number of decimals for all
        assert got_labels[: len(labels)] == labels


def test_colours() -> None:
    assert rgb("#d62728") == (214, 39, 40)
    assert blend("#000000", 0.25) == "#bfbfbf"
    assert blend("#b0b0b0", 1.0) == "#b0b0b0" and blend("#b0b0b0", 0.0) == "#ffffff"


def test_lines_boxes_and_pictures_land_where_placed(tmp_path: Path) -> None:
    canvas = Canvas(4.0, 2.0, dpi=50)  # 200 x 100 px
    assert canvas.pixels.shape == (100, 200, 3) and (canvas.pixels == 255).all()
    canvas.boxes(np.array([[0.0, 0.0, 1.0, 1.0]]), "#ff0000")  # bottom left quarter... of the left half
    canvas.lines([np.array([[2.0, 1.5], [4.0, 1.5]])], "#0000ff", 3.0)  # across the top right
    face = np.zeros((30, 10, 3), np.uint8)
    face[..., 1] = 200
    canvas.picture(face, (2.0, 0.0, 2.0, 1.0))  # a tall picture in a wide box: centred, aspect kept
    canvas.text(Text(0.1, 1.9, "a title", 10, "lt"))
    path = canvas.save(tmp_path / "c.png")
    image = np.asarray(Image.open(path))
    assert image.shape == (100, 200, 3)  # RGB, no alpha channel
    assert (image[50:100, 0:50] == (255, 0, 0)).all() and (image[30:50, 50:95] == 255).all()
    assert (image[25, 110:200] == (0, 0, 255)).all()  # y 1.5 in from the bottom: row 25
    green = np.argwhere((image[..., 1] == 200) & (image[..., 0] == 0))
    assert green[:, 0].min() == 50 and green[:, 0].max() == 99  # the box's full height
    assert abs((green[:, 1].min() + green[:, 1].max()) / 2 - 150) <= 1  # centred in the box
    assert green[:, 1].max() - green[:, 1].min() + 1 == round(50 * 10 / 30)  # as wide as the aspect allows
    assert (image[0:20, 0:50] < 128).any()  # the text's dark pixels, top left


def test_pictures_are_clipped_at_the_edges() -> None:
    canvas = Canvas(1.0, 1.0, dpi=10)
    face = np.zeros((20, 20, 3), np.uint8)
    canvas.picture(face, (0.5, 0.5, 1.0, 1.0))  # the top right quarter of it falls inside
    assert (canvas.pixels[:5, 5:] == 0).all() and (canvas.pixels[5:, :] == 255).all()
    canvas.picture(face, (3.0, 3.0, 1.0, 1.0))  # wholly outside: nothing drawn, no error
    assert (canvas.pixels[:, :5] == 255).all()


def test_rotated_text_stands_upright(tmp_path: Path) -> None:
    canvas = Canvas(1.0, 2.0, dpi=100)
    canvas.text(Text(0.5, 1.0, "probability", 12, "mm", rotation=90))
    image = np.asarray(Image.open(canvas.save(tmp_path / "r.png")).convert("L"))
    ys, xs = np.nonzero(image < 128)
    assert ys.max() - ys.min() > 2 * (xs.max() - xs.min())  # taller than wide
    assert abs((ys.min() + ys.max()) / 2 - 100) <= 3 and abs((xs.min() + xs.max()) / 2 - 50) <= 3


def test_without_dejavu_the_texts_use_pillows_own_font(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raster, "_font_file", lambda italic: None)
    raster._font.cache_clear()
    try:
        canvas = Canvas(2.0, 1.0, dpi=100)
        canvas.text(Text(0.1, 0.5, "no DejaVu here", 12, "lm", italic=True))
        image = np.asarray(Image.open(canvas.save(tmp_path / "f.png")).convert("L"))
        assert (image < 128).sum() > 50
    finally:
        raster._font.cache_clear()
