"""Following faces through a video so emotion timelines are per person, not per "face number 0".

Frames are sampled sparsely (2 per second by default), so a face can move further than its own width between
two samples and box overlap (IoU) often drops to zero. The tracker therefore matches on the distance between
a track's predicted centre (constant velocity) and each face's centre, in face widths, plus how much the size
changed; the allowed distance grows with the time since the track was last seen. Matching is greedy, best pair
first. Ids are stable while the person stays in view and are never reused within a video.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .detection import Detection


@dataclass
class _Track:
    id: int
    cx: float
    cy: float
    w: float
    h: float
    seen_s: float
    vx: float = 0.0
    vy: float = 0.0
    missed: int = 0


class FaceTracker:
    """Assigns track ids to each sampled frame's faces, in time order, within one video."""

    def __init__(
        self,
        base_shift: float = 0.6,
        shift_per_s: float = 1.2,
        max_size_change: float = 2.0,
        max_missed: int = 2,
        min_gap_s: float = 1.0,
    ) -> None:
        #: A face may be up to base_shift + shift_per_s * dt face widths from the predicted centre.
        self.base_shift = base_shift
        self.shift_per_s = shift_per_s
        #: ... and at most this factor bigger or smaller.
        self.max_size_change = max_size_change
        #: A track survives while it has missed at most `max_missed` samples or `min_gap_s` seconds.
        self.max_missed = max_missed
        self.min_gap_s = min_gap_s
        self._tracks: list[_Track] = []
        self._next_id = 0

    @property
    def tracks_started(self) -> int:
        return self._next_id

    def _cost(self, track: _Track, face: Detection, t: float) -> float | None:
        """Centre distance (face widths) plus log size change, or None when the pair is implausible."""
        dt = max(0.0, t - track.seen_s)
        gx, gy = track.cx + track.vx * dt, track.cy + track.vy * dt
        shift = math.hypot(face.x + face.w / 2 - gx, face.y + face.h / 2 - gy) / max(track.w, face.w)
        size_change = abs(math.log(max(face.w, 1e-6) / max(track.w, 1e-6)))
        if shift > self.base_shift + self.shift_per_s * dt or size_change > math.log(self.max_size_change):
            return None
        return shift + size_change

    def update(self, faces: Sequence[Detection], timestamp_s: float) -> list[int]:
        """Track ids for `faces` (same order) at `timestamp_s`; call in time order."""
        pairs = sorted(
            (cost, ti, fi)
            for ti, track in enumerate(self._tracks)
            for fi, face in enumerate(faces)
            if (cost := self._cost(track, face, timestamp_s)) is not None
        )
        ids = [-1] * len(faces)
        used: set[int] = set()
        for _, ti, fi in pairs:
            if ti in used or ids[fi] != -1:
                continue
            used.add(ti)
            ids[fi] = self._tracks[ti].id
            self._move(self._tracks[ti], faces[fi], timestamp_s)

        for ti, track in enumerate(self._tracks):
            if ti not in used:
                track.missed += 1
        for fi, face in enumerate(faces):
            if ids[fi] == -1:
                ids[fi] = self._next_id
                self._tracks.append(
                    _Track(
                        self._next_id, face.x + face.w / 2, face.y + face.h / 2, face.w, face.h, timestamp_s
                    )
                )
                self._next_id += 1
        self._tracks = [
            t for t in self._tracks if t.missed <= self.max_missed or timestamp_s - t.seen_s <= self.min_gap_s
        ]
        return ids

    @staticmethod
    def _move(track: _Track, face: Detection, t: float) -> None:
        cx, cy = face.x + face.w / 2, face.y + face.h / 2
        dt = t - track.seen_s
        if dt > 0:
            # Smoothed velocity: detections jitter, a raw difference would overshoot on the next guess.
            track.vx = 0.5 * track.vx + 0.5 * (cx - track.cx) / dt
            track.vy = 0.5 * track.vy + 0.5 * (cy - track.cy) / dt
        track.cx, track.cy, track.w, track.h, track.seen_s, track.missed = cx, cy, face.w, face.h, t, 0


def smooth(times: np.ndarray, values: np.ndarray, window_s: float) -> np.ndarray:
    """Centred moving average over a time window (not a sample count, since sampling may be irregular).

    `times` must be sorted; `values` is [n] or [n, k]. Each output is the mean of the samples within
    +-window_s/2 of its time.
    """
    times = np.asarray(times, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if len(times) == 0 or window_s <= 0:
        return values.copy()
    lo = np.searchsorted(times, times - window_s / 2, side="left")
    hi = np.searchsorted(times, times + window_s / 2, side="right")
    cumulative = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values, axis=0)])
    counts = (hi - lo).reshape(-1, *([1] * (values.ndim - 1)))
    return (cumulative[hi] - cumulative[lo]) / counts
