"""WebVTT subtitles of each person's emotion over a video, to watch beside the video in any player.

One file per video (`subtitle_filename`, beside the charts). How cues are made:

1. Per track (a `(shot, track_id)`), the probabilities are smoothed over time exactly as the timeline chart does
   (`charts.smoothing_window`, `vision.tracking.smooth`), so the subtitles tell what the chart shows; pass
   `window_s=0` for the raw per-sample values.
2. Each sample stands for the time until the track's next sample, or one sampling step [t, t + step) when
   it is the track's last before a gap (step = the source's sampling interval, `timeline.sampling_interval`).
   Consecutive samples of a track with the same dominant emotion (highest smoothed probability) and no gap
   longer than 1.5 steps form one segment; its number is the mean smoothed probability of that emotion over
   the segment.
3. Segments of all tracks are swept into non-overlapping cues, one line per track on screen, sorted by track:
   "track 2: happy 0.81". Cues never overlap, so every player shows them the same way.
"""

from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..files import quick_replace
from ..schema import EMOTIONS, dominant_emotion
from ..vision.tracking import smooth
from .charts import smoothing_window
from .timeline import face_rows, safe_filename, sampling_interval

if TYPE_CHECKING:
    import pandas as pd

#: A gap between two samples of a track longer than this many sampling steps ends its segment.
MAX_GAP_STEPS = 1.5
#: Cue length of a lone sample when the sampling step is unknown (a video with one sampled frame).
FALLBACK_STEP_S = 1.0


@dataclass(frozen=True)
class Segment:
    """A stretch of time during which one track showed one dominant emotion."""

    label: str
    order: tuple[int, int]
    start_s: float
    end_s: float
    emotion: str
    probability: float

    @property
    def text(self) -> str:
        return f"{self.label}: {self.emotion} {self.probability:.2f}"


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    lines: tuple[str, ...]


def subtitle_filename(source: str) -> str:
    """`<flattened source>.emotions.vtt`, named like the charts (see `timeline.safe_filename`)."""
    return safe_filename(source, ".emotions.vtt")


def _labels(faces: pd.DataFrame) -> dict[tuple[object, int], str]:
    """ "track 3", or "shot 2 track 3" when track ids repeat across shots."""
    keys = list(dict.fromkeys(zip(faces["shot"], faces["track_id"].astype(int))))
    ids = [t for _, t in keys]
    repeated = len(set(ids)) < len(ids)
    return {
        (s, t): (f"shot {s} track {t}" if repeated and s is not None and s == s else f"track {t}")
        for s, t in keys
    }


def track_segments(
    rows: pd.DataFrame, window_s: float | None = None, interval_s: float | None = None
) -> list[Segment]:
    """The segments of one video's rows (all of them, frames without faces too: they give the sampling step)."""
    import pandas as pd

    step = interval_s if interval_s is not None else max(sampling_interval(rows).values(), default=0.0)
    step = step if step > 0 else FALLBACK_STEP_S
    faces = face_rows(rows)
    if faces.empty:
        return []
    window = smoothing_window(faces["timestamp_s"].to_numpy(dtype=float)) if window_s is None else window_s
    faces["shot"] = faces["shot"].astype(object).where(faces["shot"].notna(), None)
    labels = _labels(faces)
    segments: list[Segment] = []
    shot: Any
    track: Any
    for (shot, track), group in faces.groupby(["shot", "track_id"], sort=True, dropna=False):
        shot = None if shot is None or pd.isna(shot) else shot
        group = group.sort_values("timestamp_s")
        t = group["timestamp_s"].to_numpy(dtype=float)
        probs = smooth(t, group[list(EMOTIONS)].to_numpy(dtype=float), window)
        label = labels[(shot, int(track))]
        order = (int(shot) if isinstance(shot, (int, np.integer)) else 0, int(track))
        first = 0
        for i in range(1, len(t) + 1):
            ends = (
                i == len(t)
                or t[i] - t[i - 1] > MAX_GAP_STEPS * step
                or int(np.argmax(probs[i])) != int(np.argmax(probs[first]))
            )
            if not ends:
                continue
            mean = probs[first:i].mean(axis=0)
            emotion = dominant_emotion(mean.tolist()) or EMOTIONS[0]
            k = EMOTIONS.index(emotion)
            # A segment the same track continues right after ends where the next begins (no overlap, no hole).
            contiguous = i < len(t) and t[i] - t[i - 1] <= MAX_GAP_STEPS * step
            end = float(t[i]) if contiguous else float(t[i - 1] + step)
            segments.append(Segment(label, order, float(t[first]), end, emotion, float(mean[k])))
            first = i
    return segments


def cues(segments: list[Segment]) -> list[Cue]:
    """Non-overlapping cues in time order: at each moment, one line per track then on screen."""
    events = sorted({s.start_s for s in segments} | {s.end_s for s in segments})
    starts = sorted(segments, key=lambda s: s.start_s)
    active: list[Segment] = []
    out: list[Cue] = []
    j = 0
    for a, b in zip(events, events[1:]):
        active = [s for s in active if s.end_s > a]
        while j < len(starts) and starts[j].start_s <= a:
            active.append(starts[j])
            j += 1
        if not active:
            continue
        lines = tuple(s.text for s in sorted(active, key=lambda s: s.order))
        if out and out[-1].lines == lines and math.isclose(out[-1].end_s, a):
            out[-1] = Cue(out[-1].start_s, b, lines)
        else:
            out.append(Cue(a, b, lines))
    return out


def format_timestamp(seconds: float) -> str:
    """WebVTT's HH:MM:SS.mmm (hours always written, so any length of video works)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def render_webvtt(cue_list: list[Cue], note: str | None = None) -> str:
    """The WebVTT text of the cues; cues that round to no time at all are left out."""
    parts = ["WEBVTT", ""]
    if note:
        parts += ["NOTE " + note.replace("-->", "->").replace("\n", " "), ""]
    n = 0
    for cue in cue_list:
        start, end = format_timestamp(cue.start_s), format_timestamp(cue.end_s)
        if end <= start:
            continue
        n += 1
        parts += [str(n), f"{start} --> {end}", *(html.escape(line, quote=False) for line in cue.lines), ""]
    return "\n".join(parts) + "\n"


def write_webvtt(
    rows: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    window_s: float | None = None,
    interval_s: float | None = None,
    note: str | None = None,
) -> Path | None:
    """Write one video's subtitles to `path`; None (and no file) when no face was seen."""
    cue_list = cues(track_segments(rows, window_s, interval_s))
    if not cue_list:
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with quick_replace(out) as partial:
        partial.write_text(render_webvtt(cue_list, note), encoding="utf-8")
    return out


_TIMING = re.compile(r"^(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3}) --> (\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})$")


def parse_webvtt(text: str) -> list[Cue]:
    """Read back what `render_webvtt` writes (header, optional NOTE, numbered cues); ValueError when malformed."""
    blocks = text.replace("\r\n", "\n").strip("\n").split("\n\n")
    if not blocks or blocks[0].split("\n")[0] != "WEBVTT":
        raise ValueError("no WEBVTT header")
    out: list[Cue] = []
    for block in blocks[1:]:
        lines = block.split("\n")
        if lines[0].startswith("NOTE"):
            continue
        if len(lines) < 3 or not lines[0].isdigit():
            raise ValueError(f"malformed cue: {block!r}")
        match = _TIMING.match(lines[1])
        if not match:
            raise ValueError(f"malformed timing line: {lines[1]!r}")
        g = [int(x) for x in match.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        out.append(Cue(start, end, tuple(html.unescape(line) for line in lines[2:])))
    return out
