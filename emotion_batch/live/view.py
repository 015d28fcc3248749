"""What the live views show, fed from the rows: per person (track), the current emotion and a sparkline.

`People` is the shared state (bounded: a short history per track, tracks not seen for a while are dropped);
`terminal_table` renders it with rich for the terminal; the preview page reads `People.snapshot()`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..schema import EMOTIONS, Row

SPARK = "▁▂▃▄▅▆▇█"
#: Samples of history per person (6 s at 5 samples/s), and how long an unseen person stays listed.
HISTORY = 30
FORGET_S = 10.0
MAX_PEOPLE = 12


def sparkline(values: Sequence[float]) -> str:
    """Values in 0..1 as block characters."""
    return "".join(SPARK[min(len(SPARK) - 1, max(0, int(v * len(SPARK))))] for v in values)


@dataclass
class Person:
    track_id: int
    emotion: str
    confidence: float
    seen: float
    history: deque[tuple[float, ...]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def trend(self) -> list[float]:
        """The probability of the current emotion over the recent samples."""
        k = EMOTIONS.index(self.emotion)
        return [p[k] for p in self.history]


class People:
    """The latest state per track, updated from each sample's rows; thread-safe, bounded."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._people: dict[int, Person] = {}
        self.clock = clock
        self.samples = 0
        self.last_faces = 0

    def update(self, rows: Sequence[Row]) -> None:
        now = self.clock()
        with self._lock:
            self.samples += 1
            self.last_faces = rows[0].n_faces if rows else 0
            for row in rows:
                if row.track_id is None or row.emotion is None:
                    continue
                person = self._people.get(row.track_id)
                if person is None:
                    person = self._people[row.track_id] = Person(row.track_id, row.emotion, 0.0, now)
                person.emotion, person.confidence, person.seen = row.emotion, row.confidence or 0.0, now
                person.history.append(tuple(float(getattr(row, e) or 0.0) for e in EMOTIONS))
            for tid in [t for t, p in self._people.items() if now - p.seen > FORGET_S]:
                del self._people[tid]
            while len(self._people) > MAX_PEOPLE:
                del self._people[min(self._people.values(), key=lambda p: p.seen).track_id]

    def snapshot(self) -> list[dict[str, Any]]:
        """Plain data per person, most recently seen first (for JSON and tables)."""
        now = self.clock()
        with self._lock:
            people = sorted(self._people.values(), key=lambda p: (-p.seen, p.track_id))
            return [
                {
                    "track_id": p.track_id,
                    "emotion": p.emotion,
                    "confidence": round(p.confidence, 3),
                    "seen_s_ago": round(now - p.seen, 1),
                    "sparkline": sparkline(p.trend()),
                }
                for p in people
            ]


def terminal_table(people: People, status: str) -> Any:
    """A rich Table of the people in view, with a status line as its caption."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="emotion-batch live", caption=status, expand=False)
    for name in ("person", "emotion", "conf", "trend", "seen"):
        table.add_column(name, justify="right" if name in ("conf", "seen") else "left")
    for p in people.snapshot():
        table.add_row(
            f"#{p['track_id']}",
            Text(p["emotion"], style="bold"),
            f"{p['confidence']:.2f}",
            Text(p["sparkline"], style="cyan"),
            f"{p['seen_s_ago']:.0f} s ago" if p["seen_s_ago"] >= 1 else "now",
        )
    return table
