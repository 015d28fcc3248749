"""What a person reads after a run: the per-file summary numbers and the PNG charts.

Charts use matplotlib's object API on the Agg canvas (no pyplot state, no display needed), so they can be drawn
in the parent process as each file's rows arrive, without keeping every file's rows in memory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..schema import EMOTIONS
from ..vision.tracking import smooth

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
#: Tracks with fewer samples than this are usually detector blips: left out of timeline charts.
MIN_TRACK_SAMPLES = 3
MAX_TRACKS_PER_CHART = 6


def chart_filename(source: str, suffix: str = ".timeline.png") -> str:
    """A flat, portable file name for a source path: folders joined with '__', odd characters replaced."""
    flat = source.replace("/", "__")
    return re.sub(r"[^\w.\-]+", "_", flat) + suffix


def smoothing_window(timestamps: np.ndarray) -> float:
    """About one second, but at least three samples wide when sampling is sparse."""
    steps = np.diff(np.unique(timestamps))
    step = float(np.median(steps)) if len(steps) else 0.0
    return max(1.0, 3 * step)


def _break_gaps(t: np.ndarray, values: np.ndarray, max_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Insert NaN rows where a track was not seen for longer than max_gap, so lines do not bridge absences."""
    gaps = np.flatnonzero(np.diff(t) > max_gap) + 1
    if not len(gaps):
        return t, values
    t = np.insert(t, gaps, np.nan)
    values = np.insert(values, gaps, np.nan, axis=0)
    return t, values


def timeline_chart(rows: pd.DataFrame, title: str, path: str | os.PathLike[str]) -> Path | None:
    """Smoothed emotion probabilities over time, one panel per track. None when no track is long enough."""
    from matplotlib.figure import Figure

    faces = rows[rows["n_faces"] > 0]
    counts = faces["track_id"].value_counts()
    keep = counts[counts >= min(MIN_TRACK_SAMPLES, int(counts.max()) if len(counts) else 0)]
    tracks = sorted(keep.sort_values(ascending=False).index[:MAX_TRACKS_PER_CHART].tolist())
    if not tracks:
        return None
    duration = float(rows["timestamp_s"].max()) if len(rows) else 0.0
    window = smoothing_window(faces["timestamp_s"].to_numpy())

    fig = Figure(figsize=(10, 1.2 + 2.1 * len(tracks)), dpi=110, layout="constrained")
    axes = fig.subplots(len(tracks), 1, sharex=True, squeeze=False)[:, 0]
    for ax, track in zip(axes, tracks):
        track_rows = faces[faces["track_id"] == track].sort_values("timestamp_s")
        t = track_rows["timestamp_s"].to_numpy(dtype=float)
        smoothed = smooth(t, track_rows[list(EMOTIONS)].to_numpy(dtype=float), window)
        t, smoothed = _break_gaps(t, smoothed, window)
        for k, emotion in enumerate(EMOTIONS):
            ax.plot(t, smoothed[:, k], color=EMOTION_COLOURS[emotion], linewidth=1.8, label=emotion)
        ax.set_ylim(0, 1)
        ax.set_xlim(0, max(duration, float(t.max()) if len(t) else 0.0, 1e-3))
        ax.set_ylabel("probability")
        ax.grid(True, alpha=0.3)
        ax.set_title(
            f"track {track}: {len(t)} samples, {t.min():.1f}-{t.max():.1f} s, "
            f"mostly {track_rows['emotion'].mode().iloc[0]}",
            fontsize=10,
            loc="left",
        )
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(f"{title} - emotion over time (smoothed over {window:.1f} s)", fontsize=12)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", frameon=False)
    out = Path(path)
    fig.savefig(out)
    return out


def overview_chart(summary: pd.DataFrame, path: str | os.PathLike[str], max_files: int = 40) -> Path | None:
    """Stacked horizontal bars: the mean emotion mix of each file that had faces. None when none had."""
    from matplotlib.figure import Figure

    with_faces = summary[(summary["status"] == "ok") & (summary["faces"].fillna(0) > 0)].head(max_files)
    if with_faces.empty:
        return None
    mix = with_faces[[f"mean_{e}" for e in EMOTIONS]].to_numpy(dtype=float)
    mix = mix / mix.sum(axis=1, keepdims=True)
    labels = [
        f"{src}  ({int(n)} face{'s' if n != 1 else ''})"
        for src, n in zip(with_faces["source"], with_faces["faces"])
    ]

    fig = Figure(figsize=(11, 1.4 + 0.42 * len(labels)), dpi=110, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    for k, emotion in enumerate(EMOTIONS):
        ax.barh(y, mix[:, k], left=left, color=EMOTION_COLOURS[emotion], label=emotion, height=0.7)
        for yi, (start, width) in enumerate(zip(left, mix[:, k])):
            if width >= 0.08:
                ax.text(start + width / 2, yi, f"{width:.0%}", ha="center", va="center", fontsize=8)
        left += mix[:, k]
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first file on top, no empty margin
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xlabel("share of mean emotion probability over all detected faces")
    ax.set_title("Emotion mix per file", fontsize=12, loc="left")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", frameon=False)
    out = Path(path)
    fig.savefig(out)
    return out
