"""What a person reads after a run: the per-file summary numbers and the PNG charts.

Charts use matplotlib's object API on the Agg canvas (no pyplot state, no display needed), so they can be drawn
in the parent process as each file's rows arrive, without keeping every file's rows in memory.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..schema import EMOTIONS, dominant_emotion
from ..vision.tracking import smooth
from .timeline import safe_filename

if TYPE_CHECKING:  # pandas and matplotlib only for annotations: the module loads without them
    import pandas as pd
    from matplotlib.figure import Figure

#: One fixed colour per emotion, so every chart reads the same way.
EMOTION_COLOURS: dict[str, str] = {
    "angry": "#d62728",
    "disgust": "#8c564b",
    "fear": "#9467bd",
    "happy": "#f2b701",
    "neutral": "#7f7f7f",
    "sad": "#1f77b4",
    "surprise": "#2ca02c",
}
#: Panels (tracks) drawn per timeline chart, the tracks with the most samples; the others are named in a note.
MAX_TRACKS_PER_CHART = 8
#: Files per overview chart; more files continue in overview-2.png, overview-3.png, ...
FILES_PER_OVERVIEW = 60
#: Overview charts drawn at most (about 0.7 s each). The files after them are counted in a note on the last one;
#: every file is in the summary CSV.
MAX_OVERVIEW_PAGES = 5
DPI = 100
#: Space between two timeline panels, in panel heights.
_GAP = 0.45
#: PNG compression: level 1 is several times faster than the default 6, for files about 20% larger.
_PNG = {"compress_level": 1}


def chart_filename(source: str, suffix: str = ".timeline.png") -> str:
    """The chart's file name for a source: `timeline.safe_filename`, as the run driver names it."""
    return safe_filename(source, suffix)


def overview_filename(page: int) -> str:
    """overview.png, then overview-2.png, ... for runs with more than FILES_PER_OVERVIEW files."""
    return "overview.png" if page == 1 else f"overview-{page}.png"


def smoothing_window(timestamps: np.ndarray) -> float:
    """About one second, but at least three samples wide when sampling is sparse."""
    steps = np.diff(np.unique(timestamps))
    step = float(np.median(steps)) if len(steps) else 0.0
    return max(1.0, 3 * step)


def _picture(path: str | os.PathLike[str] | None) -> np.ndarray | None:
    """A thumbnail as an RGB array (Pillow, which matplotlib loads anyway); None when missing or unreadable."""
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(os.fspath(path)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _face_box(
    image: np.ndarray, box: tuple[float, float, float, float], box_in: tuple[float, float]
) -> tuple[float, float, float, float]:
    """Where `image` goes, aspect kept and centred, in a box (x, y, w, h) of axes fractions `box_in` inches big."""
    x, y, w, h = box
    scale = min(box_in[0] / image.shape[1], box_in[1] / image.shape[0])
    fw, fh = image.shape[1] * scale / box_in[0] * w, image.shape[0] * scale / box_in[1] * h
    return x + (w - fw) / 2, y + (h - fh) / 2, fw, fh


def timeline_chart(
    rows: pd.DataFrame,
    title: str,
    path: str | os.PathLike[str],
    pictures: Mapping[int, str | os.PathLike[str]] | None = None,
) -> Path | None:
    """Smoothed emotion probabilities over time, one panel per track with its face beside it; None without faces.

    The MAX_TRACKS_PER_CHART tracks with the most samples get a panel, in order of appearance; any others are
    named in a note at the bottom (every track is in the report and the tracks CSV). A panel's title gives the
    track's real sample count and time range and its dominant emotion (`schema.dominant_emotion`).

    Drawing is what a chart costs, and this one is drawn in the parent while the workers analyse, so it is drawn
    with few artists: the panels are bands of one axes (one x axis, not one per panel), each emotion is one line
    collection across all panels, the frames, tick marks and grid are one collection each, the faces are images on
    the figure, and the texts are drawn by Pillow (`_Label`).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.image import BboxImage
    from matplotlib.transforms import Bbox, TransformedBbox, blended_transform_factory

    faces = rows[(rows["n_faces"] > 0) & rows["track_id"].notna()]
    if faces.empty:
        return None
    counts = faces.groupby("track_id")["timestamp_s"].agg(["size", "min"])
    ranked = counts.sort_values(["size", "min"], ascending=[False, True])
    shown = ranked.head(MAX_TRACKS_PER_CHART).sort_values("min")
    hidden = ranked.index[MAX_TRACKS_PER_CHART:]
    tracks = [int(t) for t in shown.index]
    n = len(tracks)
    duration = float(rows["timestamp_s"].max()) if len(rows) else 0.0
    window = smoothing_window(faces["timestamp_s"].to_numpy())
    pictures = pictures or {}

    panel_h, top, bottom = 1.7, 0.8, 0.55 + (0.3 if len(hidden) else 0.0)
    left, right, width = 1.55, 1.25, 10.5
    height = top + bottom + panel_h * n
    fig = Figure(figsize=(width, height), dpi=DPI)
    ax = fig.add_axes((left / width, bottom / height, 1 - (left + right) / width, panel_h * n / height))
    # Panel k (0 on top) spans [base_k, base_k + 1] in y; GAP is the space between panels, in panel heights.
    bases = [(n - 1 - k) * (1 + _GAP) for k in range(n)]
    units_per_in = (n + (n - 1) * _GAP) / (panel_h * n)
    panel_in = 1 / units_per_in
    xmax = max(duration, float(faces["timestamp_s"].max()), 1e-3)
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, bases[0] + 1)
    # matplotlib's own ticks on (0, xmax), but no Axis draws them: tick marks and frames are one collection, tick
    # labels plain texts (an Axis makes artists per tick and measures them all again to place its label).
    ticks = [float(x) for x in ax.xaxis.get_majorticklocs() if -1e-9 <= x <= xmax * (1 + 1e-9)]
    tick_labels = ax.xaxis.get_major_formatter().format_ticks(ticks)
    ax.set_axis_off()

    levels = (0.0, 0.5, 1.0)
    lines: list[list[np.ndarray]] = [[] for _ in EMOTIONS]
    frames: list[list[tuple[float, float]]] = []  # panel frames and tick marks
    grid: list[list[tuple[float, float]]] = []
    # Tick marks of matplotlib's default length (3.5 points), outside each panel's frame, in data units.
    tick_y, tick_x = 3.5 / 72 * units_per_in, 3.5 / 72 * xmax / (width - left - right)
    by_panel = blended_transform_factory(ax.transAxes, ax.transData)
    labels: list[_Label] = []  # the texts, drawn by Pillow over the rendered figure (see _Label)

    def y_in(value: float) -> float:  # a y value, in inches from the figure's bottom
        return bottom + value / units_per_in

    face_in = (0.1 * (width - left - right), panel_in)
    # One pass over the rows (numpy, not a pandas selection per track): sorted by track, then time.
    ids = faces["track_id"].to_numpy(dtype=float)
    all_times = faces["timestamp_s"].to_numpy(dtype=float)
    order = np.lexsort((all_times, ids))
    ids, all_times = ids[order], all_times[order]
    all_probs = faces[list(EMOTIONS)].to_numpy(dtype=float)[order]
    for base, track in zip(bases, tracks):
        first, last = np.searchsorted(ids, track, side="left"), np.searchsorted(ids, track, side="right")
        times, probs = all_times[first:last], all_probs[first:last]
        smoothed = smooth(times, probs, window)
        # Lines are broken where the track was out of view for longer than the smoothing window.
        pieces = np.split(np.arange(len(times)), np.flatnonzero(np.diff(times) > window) + 1)
        for k in range(len(EMOTIONS)):
            lines[k].extend(np.column_stack([times[p], base + smoothed[p, k]]) for p in pieces)
        frames.append([(0, base), (xmax, base), (xmax, base + 1), (0, base + 1), (0, base)])
        frames.extend([(x, base), (x, base - tick_y)] for x in ticks)
        frames.extend([(0, base + v), (-tick_x, base + v)] for v in levels)
        labels.extend(_Label(left - 7 / 72, y_in(base + v), f"{v:.1f}", 8, "rm") for v in levels)
        grid.extend([(0, base + v), (xmax, base + v)] for v in levels)
        grid.extend([(x, base), (x, base + 1)] for x in ticks)
        dominant = dominant_emotion(probs.mean(axis=0).tolist())
        text = (
            f"track {track}: {len(times)} samples, {times.min():.1f}-{times.max():.1f} s, mostly {dominant}"
        )
        labels.append(_Label(left, y_in(base + 1) + 6 / 72, text, 9.5))
        face = _picture(pictures.get(track))
        if (
            face is None
        ):  # no face to show who this track is: say what the axis is instead (rotated: matplotlib)
            ax.text(-0.07, base + 0.5, "probability", transform=by_panel, fontsize=8, rotation=90, ha="center",
                    va="center")  # fmt: skip
            continue
        span = bases[0] + 1  # the axes' height in y units
        where = Bbox.from_bounds(*_face_box(face, (-0.135, base / span, 0.1, 1 / span), face_in))
        picture = BboxImage(TransformedBbox(where, ax.transAxes), interpolation="antialiased")
        picture.set_data(face)
        fig.add_artist(picture)
    ax.add_collection(
        LineCollection(grid, colors="#b0b0b0", linewidths=0.8, alpha=0.3, zorder=1.5), autolim=False
    )
    for k, emotion in enumerate(EMOTIONS):
        ax.add_collection(
            LineCollection(lines[k], colors=EMOTION_COLOURS[emotion], linewidths=1.6, zorder=2), autolim=False
        )
    ax.add_collection(
        LineCollection(frames, colors="black", linewidths=0.8, zorder=2.5, clip_on=False), autolim=False
    )
    axes_w = width - left - right
    labels.extend(
        _Label(left + x / xmax * axes_w, bottom - 7 / 72, text, 8, "mt")
        for x, text in zip(ticks, tick_labels)
    )
    labels.append(_Label(left + axes_w / 2, bottom - 20 / 72, "time (s)", 9, "mt"))
    suptitle = f"{title} - emotion over time (smoothed over {window:.1f} s)"
    labels.append(_Label(0.02 * width, 0.98 * height, suptitle, 11, "lt"))
    labels.extend(_legend(fig, top, linewidth=1.6))
    if len(hidden):
        names = ", ".join(str(int(t)) for t in sorted(hidden)[:30]) + (" ..." if len(hidden) > 30 else "")
        note = f"{len(hidden)} more track(s) with fewer samples, not drawn: {names} (see the report and the tracks CSV)"
        labels.append(_Label(0.02 * width, 0.1, note, 8.5, colour="#a11"))
    return _save_png(fig, path, labels)


def _legend(fig: Figure, top_in: float, linewidth: float) -> list[_Label]:
    """The emotions' colours, top right under `top_in` inches of margin, as `fig.legend(loc="upper right",
    frameon=False)` places them: one line collection, and the seven labels returned (a Legend lays its entries
    out in offset boxes, several times the cost of drawing them)."""
    from matplotlib.collections import LineCollection
    from matplotlib.transforms import Affine2D

    # In points from the top right corner under the margin, where matplotlib's defaults put a legend's entries
    # at 10 points: the first row 13 points down, rows 15.3 points apart, a 20-point handle 8 points left of
    # its label.
    width_pt, height_pt = fig.get_figwidth() * 72, fig.get_figheight() * 72
    to_figure = Affine2D().translate(width_pt, height_pt - top_in * 72).scale(1 / 72) + fig.dpi_scale_trans
    rows = [-13 - 15.3 * k for k in range(len(EMOTIONS))]
    fig.add_artist(
        LineCollection(
            [[(-77, y), (-57, y)] for y in rows],
            colors=[EMOTION_COLOURS[e] for e in EMOTIONS],
            linewidths=linewidth,
            transform=to_figure,
        )
    )
    return [
        _Label((width_pt - 49) / 72, (height_pt + y) / 72 - top_in, e, 10, "lm")
        for e, y in zip(EMOTIONS, rows)
    ]


@dataclass(frozen=True)
class _Label:
    """A text of a chart, drawn by Pillow on the rendered figure: matplotlib lays out and rasterises a text anew
    for every draw (about 5 ms for a panel title, most of a chart's cost), Pillow draws the same glyphs of the same
    font about 15 times faster.

    `x`, `y`: inches from the figure's bottom left; `size`: points; `anchor`: Pillow's text anchor ("ls": left
    baseline, "rm": right middle, "mt": middle top, ...)."""

    x: float
    y: float
    text: str
    size: float
    anchor: str = "ls"
    colour: str = "black"
    italic: bool = False


@functools.lru_cache(maxsize=64)
def _font(size_px: float, italic: bool, thread: int) -> Any:
    """matplotlib's default font (its sans-serif, italic or not) as a Pillow font `size_px` pixels high, loaded
    once per size and thread (a FreeType face is not to be used by two threads at once; matplotlib caches its own
    fonts per thread for the same reason)."""
    from matplotlib import font_manager
    from PIL import ImageFont

    path = font_manager.findfont(font_manager.FontProperties(style="italic" if italic else "normal"))
    try:
        return ImageFont.truetype(path, size_px)
    except TypeError:  # Pillow before 10.1 takes whole pixel sizes
        return ImageFont.truetype(path, round(size_px))


def _save_png(fig: Figure, path: str | os.PathLike[str], labels: Sequence[_Label] = ()) -> Path:
    """Render `fig` on the Agg canvas, draw `labels` over it and write an RGB PNG (the figure is opaque: no alpha
    channel to encode, a quarter less data than `savefig`'s RGBA for the same picture)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image, ImageDraw

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    draw = ImageDraw.Draw(image)
    dpi, height = fig.dpi, image.height
    for label in labels:
        font = _font(label.size * dpi / 72, label.italic, threading.get_ident())
        xy = (label.x * dpi, height - label.y * dpi)
        draw.text(xy, label.text, fill=label.colour, font=font, anchor=label.anchor)
    out = Path(path)
    image.save(out, format="PNG", dpi=(dpi, dpi), **_PNG)
    return out


def _status(row: Mapping[Any, Any]) -> str | None:
    """Why a file has no bar: 'no face', 'error: <kind>' or 'skipped'; None when it has one."""
    status = row.get("status")
    if status == "error":
        return f"error: {row.get('error_kind') or 'unknown'}"
    if status != "ok":
        return str(status or "not analysed")
    faces = row.get("faces")
    return None if faces == faces and faces and float(faces) > 0 else "no face"


def overview_pages(summary: pd.DataFrame) -> list[tuple[int, pd.DataFrame, int]]:
    """(page number, its files, files left out after it) of each overview chart: FILES_PER_OVERVIEW files per
    page, at most MAX_OVERVIEW_PAGES pages; only the last page leaves files out."""
    starts = list(range(0, len(summary), FILES_PER_OVERVIEW))[:MAX_OVERVIEW_PAGES]
    pages = []
    for page, start in enumerate(starts, start=1):
        part = summary.iloc[start : start + FILES_PER_OVERVIEW]
        more = len(summary) - (start + len(part)) if page == len(starts) else 0
        pages.append((page, part, more))
    return pages


def overview_charts(summary: pd.DataFrame, folder: str | os.PathLike[str]) -> list[Path]:
    """Every file of the summary as one bar of its emotion mix, on the pages of `overview_pages`.

    Files without a bar (no face, error, skipped) are listed with the reason in place of the bar. Returns the
    charts written (overview.png first); empty when the summary is.
    """
    folder = Path(folder)
    return [
        overview_chart(part, folder / overview_filename(page), page, more)
        for page, part, more in overview_pages(summary)
    ]


def overview_chart(summary: pd.DataFrame, path: str | os.PathLike[str], page: int = 1, more: int = 0) -> Path:
    """Stacked horizontal bars: the mean emotion mix of each file, and the reason where a file has none.

    `more`: files after these that no chart draws, said in a note under the bars."""
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.figure import Figure

    records = summary.to_dict("records")
    reasons = [_status(r) for r in records]
    mix = summary[[f"mean_{e}" for e in EMOTIONS]].to_numpy(dtype=float)
    mix = np.where(np.isnan(mix), 0.0, mix)
    totals = mix.sum(axis=1, keepdims=True)
    mix = np.divide(mix, totals, out=np.zeros_like(mix), where=totals > 0)
    labels = []
    for r, reason in zip(records, reasons):
        n = r.get("faces")
        faces = int(n) if reason is None and n == n and n is not None else 0
        labels.append(
            f"{r['source']}  ({faces} face{'s' if faces != 1 else ''})" if reason is None else r["source"]
        )

    width, top, bottom, row_h = 11.0, 0.6, 0.6 + (0.3 if more else 0.0), 0.34
    height = top + bottom + row_h * max(1, len(labels))
    longest = max((len(str(label)) for label in labels), default=10)
    left = min(5.0, 0.4 + 0.065 * longest)
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(
        left=left / width, right=1 - 1.2 / width, top=1 - top / height, bottom=bottom / height
    )
    ax = fig.subplots()
    y = np.arange(len(labels))
    start = np.zeros(len(labels))
    n_rows = max(1, len(labels))
    axes_w = width - left - 1.2
    texts: list[_Label] = []

    def x_in(share: float) -> float:  # inches from the figure's left
        return left + share * axes_w

    def y_in(
        row: float,
    ) -> float:  # a row's middle, in inches from the figure's bottom (the first row on top)
        return bottom + (n_rows - 0.5 - row) * row_h

    for k, emotion in enumerate(EMOTIONS):  # one collection of bars per emotion: 7 artists, not one per bar
        verts = [
            ((x0, yi - 0.35), (x0 + w, yi - 0.35), (x0 + w, yi + 0.35), (x0, yi + 0.35))
            for yi, (x0, w) in enumerate(zip(start, mix[:, k]))
            if w > 0
        ]
        ax.add_collection(
            PolyCollection(verts, facecolors=EMOTION_COLOURS[emotion], edgecolors="none", label=emotion),
            autolim=False,
        )
        for yi, (x0, w) in enumerate(zip(start, mix[:, k])):
            if w >= 0.08:
                texts.append(_Label(x_in(x0 + w / 2), y_in(yi), f"{w:.0%}", 8, "mm"))
        start += mix[:, k]
    for yi, reason in enumerate(reasons):
        if reason is not None:
            colour = "#a11" if reason.startswith("error") else "#5b6672"
            texts.append(_Label(x_in(0.01), y_in(yi), reason, 8.5, "lm", colour, italic=True))
    bottom_y = len(labels) - 0.5
    ax.set_ylim(bottom_y, -0.5)  # first file on top, no empty margin
    ax.set_xlim(0, 1)
    # The frame, ticks and labels by hand, as in timeline_chart: one collection and plain texts, no Axis.
    ax.set_axis_off()
    tick_x, tick_y = 3.5 / 72 / (width - left - 1.2), 3.5 / 72 / row_h
    shares = [i / 5 for i in range(6)]
    marks: list[list[tuple[float, float]]] = [
        [(0, bottom_y), (1, bottom_y), (1, -0.5), (0, -0.5), (0, bottom_y)]
    ]
    marks += [[(x, bottom_y), (x, bottom_y + tick_y)] for x in shares]
    marks += [[(0, float(yi)), (-tick_x, float(yi))] for yi in y]
    ax.add_collection(LineCollection(marks, colors="black", linewidths=0.8, clip_on=False), autolim=False)
    texts.extend(_Label(left - 7 / 72, y_in(row), str(label), 8.5, "rm") for row, label in enumerate(labels))
    texts.extend(_Label(x_in(x), bottom - 7 / 72, f"{x:.0%}", 10, "mt") for x in shares)
    xlabel = "share of mean emotion probability over all detected faces"
    texts.append(_Label(x_in(0.5), bottom - 23 / 72, xlabel, 9, "mt"))
    if more:
        note = (
            f"{more:,} more file{'s' if more != 1 else ''} not drawn here: every file is in the summary CSV"
        )
        texts.append(_Label(left, 0.12, note, 9, colour="#5b6672", italic=True))
    numbered = f" (page {page})" if page > 1 else ""
    texts.append(_Label(left, height - top + 6 / 72, f"Emotion mix per file{numbered}", 12))
    texts.extend(_legend(fig, top, linewidth=7.0))
    return _save_png(fig, path, texts)
