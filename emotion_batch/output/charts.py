"""What a person reads after a run: the PNG charts, a timeline per video and the overview of all files.

Charts are drawn on `raster.Canvas` (OpenCV lines, Pillow texts), cheaply enough to be drawn in the parent
process as each file's rows arrive, while the workers analyse, without keeping every file's rows in memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..schema import EMOTIONS, dominant_emotion
from ..vision.tracking import smooth
from .raster import Canvas, Text, blend, legend, nice_ticks
from .timeline import safe_filename

if TYPE_CHECKING:  # pandas only for annotations: the module loads without it
    import pandas as pd

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
#: Overview charts drawn at most. The files after them are counted in a note on the last one;
#: every file is in the summary CSV.
MAX_OVERVIEW_PAGES = 5
DPI = 100
#: Space between two timeline panels, in panel heights.
_GAP = 0.45
_LEGEND = [(emotion, EMOTION_COLOURS[emotion]) for emotion in EMOTIONS]
_GRID = blend("#b0b0b0", 0.3)
_ERROR = "#aa1111"
_MUTED = "#5b6672"


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
    """A thumbnail as an RGB array; None when missing or unreadable."""
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(os.fspath(path)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def timeline_chart(
    rows: pd.DataFrame,
    title: str,
    path: str | os.PathLike[str],
    pictures: Mapping[int, str | os.PathLike[str]] | None = None,
) -> Path | None:
    """Smoothed emotion probabilities over time, one panel per track with its face beside it; None without faces.

    The MAX_TRACKS_PER_CHART tracks with the most samples get a panel, in order of appearance; any others are
    named in a note at the bottom (every track is in the report and the tracks CSV). A panel's title gives the
    track's real sample count and time range and its dominant emotion (`schema.dominant_emotion`). Each
    emotion's line is broken where the track was out of view for longer than the smoothing window.
    """
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
    canvas = Canvas(width, height, DPI)
    axes_w = width - left - right
    # Panel k (0 on top) spans [base_k, base_k + 1] in y units; _GAP is the space between panels, in panel heights.
    bases = [(n - 1 - k) * (1 + _GAP) for k in range(n)]
    panel_in = panel_h * n / (n + (n - 1) * _GAP)  # inches per y unit: one panel's height
    xmax = max(duration, float(faces["timestamp_s"].max()), 1e-3)
    ticks, tick_labels = nice_ticks(xmax)

    def x_in(t: Any) -> Any:  # a time (or an array of times), in inches from the left
        return left + np.asarray(t, dtype=float) / xmax * axes_w

    def y_in(value: Any) -> Any:  # a y value (or an array), in inches from the bottom
        return bottom + np.asarray(value, dtype=float) * panel_in

    def segment(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return np.array([[x0, y0], [x1, y1]], dtype=float)

    levels = (0.0, 0.5, 1.0)
    tick_len = 3.5 / 72  # tick marks of 3.5 points, outside each panel's frame
    lines: list[list[np.ndarray]] = [[] for _ in EMOTIONS]
    frames: list[np.ndarray] = []  # panel frames and tick marks
    grid: list[np.ndarray] = []
    # One pass over the rows (numpy, not a pandas selection per track): sorted by track, then time.
    ids = faces["track_id"].to_numpy(dtype=float)
    all_times = faces["timestamp_s"].to_numpy(dtype=float)
    order = np.lexsort((all_times, ids))
    ids, all_times = ids[order], all_times[order]
    all_probs = faces[list(EMOTIONS)].to_numpy(dtype=float)[order]
    x_right = left + axes_w
    for base, track in zip(bases, tracks):
        first, last = np.searchsorted(ids, track, side="left"), np.searchsorted(ids, track, side="right")
        times, probs = all_times[first:last], all_probs[first:last]
        smoothed = smooth(times, probs, window)
        pieces = np.split(np.arange(len(times)), np.flatnonzero(np.diff(times) > window) + 1)
        xs = x_in(times)
        for k in range(len(EMOTIONS)):
            ys = y_in(base + smoothed[:, k])
            lines[k].extend(np.column_stack([xs[p], ys[p]]) for p in pieces)
        y0, y1 = float(y_in(base)), float(y_in(base + 1))
        frames.append(np.array([[left, y0], [x_right, y0], [x_right, y1], [left, y1], [left, y0]]))
        frames.extend(segment(float(x_in(x)), y0, float(x_in(x)), y0 - tick_len) for x in ticks)
        for v in levels:
            y = float(y_in(base + v))
            frames.append(segment(left, y, left - tick_len, y))
            grid.append(segment(left, y, x_right, y))
            canvas.text(Text(left - 7 / 72, y, f"{v:.1f}", 8, "rm"))
        grid.extend(segment(float(x_in(x)), y0, float(x_in(x)), y1) for x in ticks)
        dominant = dominant_emotion(probs.mean(axis=0).tolist())
        text = (
            f"track {track}: {len(times)} samples, {times.min():.1f}-{times.max():.1f} s, mostly {dominant}"
        )
        canvas.text(Text(left, y1 + 6 / 72, text, 9.5))
        face = _picture(pictures.get(track))
        if face is None:  # no face to show who this track is: say what the axis is instead
            canvas.text(Text(left - 0.07 * axes_w, (y0 + y1) / 2, "probability", 8, "mm", rotation=90))
        else:
            canvas.picture(face, (left - 0.135 * axes_w, y0, 0.1 * axes_w, panel_in))
    canvas.lines(grid, _GRID, 0.8)
    for k, emotion in enumerate(EMOTIONS):
        canvas.lines(lines[k], EMOTION_COLOURS[emotion], 1.6)
    canvas.lines(frames, "#000000", 0.8)
    for x, label in zip(ticks, tick_labels):
        canvas.text(Text(float(x_in(x)), bottom - 7 / 72, label, 8, "mt"))
    canvas.text(Text(left + axes_w / 2, bottom - 20 / 72, "time (s)", 9, "mt"))
    suptitle = f"{title} - emotion over time (smoothed over {window:.1f} s)"
    canvas.text(Text(0.02 * width, 0.98 * height, suptitle, 11, "lt"))
    legend(canvas, _LEGEND, width, height - top, 1.6)
    if len(hidden):
        names = ", ".join(str(int(t)) for t in sorted(hidden)[:30]) + (" ..." if len(hidden) > 30 else "")
        note = f"{len(hidden)} more track(s) with fewer samples, not drawn: {names} (see the report and the tracks CSV)"
        canvas.text(Text(0.02 * width, 0.1, note, 8.5, colour=_ERROR))
    return canvas.save(path)


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

    width, right, top, bottom, row_h = 11.0, 1.2, 0.6, 0.6 + (0.3 if more else 0.0), 0.34
    n_rows = max(1, len(labels))
    height = top + bottom + row_h * n_rows
    longest = max((len(str(label)) for label in labels), default=10)
    left = min(5.0, 0.4 + 0.065 * longest)
    axes_w = width - left - right
    canvas = Canvas(width, height, DPI)

    def x_in(share: Any) -> Any:  # a share (or an array of shares), in inches from the figure's left
        return left + np.asarray(share, dtype=float) * axes_w

    rows_y = bottom + (n_rows - 0.5 - np.arange(len(labels))) * row_h  # each row's middle, the first on top
    start = np.zeros(len(labels))
    for k, emotion in enumerate(EMOTIONS):
        widths = mix[:, k]
        drawn = widths > 0
        boxes = np.column_stack(
            [x_in(start), rows_y - 0.35 * row_h, x_in(start + widths), rows_y + 0.35 * row_h]
        )
        canvas.boxes(boxes[drawn], EMOTION_COLOURS[emotion])
        for x0, w, y in zip(start, widths, rows_y):
            if w >= 0.08:
                canvas.text(Text(float(x_in(x0 + w / 2)), float(y), f"{w:.0%}", 8, "mm"))
        start += widths
    for y, reason in zip(rows_y, reasons):
        if reason is not None:
            colour = _ERROR if reason.startswith("error") else _MUTED
            canvas.text(Text(float(x_in(0.01)), float(y), reason, 8.5, "lm", colour, italic=True))
    tick_len = 3.5 / 72
    x_right, y_top = left + axes_w, bottom + n_rows * row_h
    shares = [i / 5 for i in range(6)]
    marks = [np.array([[left, bottom], [x_right, bottom], [x_right, y_top], [left, y_top], [left, bottom]])]
    marks += [np.array([[x_in(x), bottom], [x_in(x), bottom - tick_len]], dtype=float) for x in shares]
    marks += [np.array([[left, y], [left - tick_len, y]]) for y in rows_y]
    canvas.lines(marks, "#000000", 0.8)
    for y, label in zip(rows_y, labels):
        canvas.text(Text(left - 7 / 72, float(y), str(label), 8.5, "rm"))
    for x in shares:
        canvas.text(Text(float(x_in(x)), bottom - 7 / 72, f"{x:.0%}", 10, "mt"))
    xlabel = "share of mean emotion probability over all detected faces"
    canvas.text(Text(float(x_in(0.5)), bottom - 23 / 72, xlabel, 9, "mt"))
    if more:
        note = (
            f"{more:,} more file{'s' if more != 1 else ''} not drawn here: every file is in the summary CSV"
        )
        canvas.text(Text(left, 0.12, note, 9, colour=_MUTED, italic=True))
    numbered = f" (page {page})" if page > 1 else ""
    canvas.text(Text(left, height - top + 6 / 72, f"Emotion mix per file{numbered}", 12))
    legend(canvas, _LEGEND, width, height - top, 7.0)
    return canvas.save(path)
