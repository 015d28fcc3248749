"""The live pipeline's middle: a latest-frame buffer filled by a decoding thread, and the analysis loop.

The decoding thread (`Decoder`) runs `sources.frames` and puts every decoded frame into `LatestFrame`, which
keeps only the newest. The analysis loop (`run`) wakes at the sampling rate, takes the newest frame, analyses
it into `Row`s exactly as batch mode does (detector, tracker with shots, classifier), hands them to the sink
and then to the observers (views). When analysis is slower than the rate, the loop does not queue up: it takes
the newest frame when it is free again and counts the samples it missed (`LiveStats.skipped`).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..analysis import frame_rows
from ..schema import EMOTIONS, Row
from ..vision.classification import Classifier, ModelCard
from ..vision.detection import Detection, DetectorSpec, create_detector
from ..vision.shots import ShotDetector
from ..vision.tracking import FaceTracker
from .sources import Arrival, SourceError, SourceSpec, SourceStats, frames

log = logging.getLogger(__name__)

#: Latencies kept for the percentiles in the summary: the most recent ones (about 33 minutes at 5 samples/s).
LATENCY_WINDOW = 10_000


class LatestFrame:
    """A one-slot buffer: `put` replaces what is there, `take` waits for something newer than what it had."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Arrival | None = None
        self._seq = 0
        self.closed = False

    def put(self, item: Arrival) -> None:
        with self._cond:
            self._item, self._seq = item, self._seq + 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def take(self, after: int, timeout: float) -> tuple[int, Arrival] | None:
        """The newest item and its sequence number once it is newer than `after`; None on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after or self.closed, timeout)
            if self._seq > after and self._item is not None:
                return self._seq, self._item
            return None


class Decoder(threading.Thread):
    """Decodes `spec` into a LatestFrame until `stop`; `error` holds a SourceError that ended it, if any."""

    def __init__(
        self, spec: SourceSpec, buffer: LatestFrame, stop: threading.Event, **reconnect: Any
    ) -> None:
        super().__init__(name="live-decoder", daemon=True)
        self.spec, self.buffer, self.stop = spec, buffer, stop
        self.stats = SourceStats()
        self.error: SourceError | None = None
        self._reconnect = reconnect

    def run(self) -> None:
        try:
            for arrival in frames(self.spec, self.stop, self.stats, **self._reconnect):
                self.buffer.put(arrival)
        except SourceError as exc:
            self.error = exc
        except Exception as exc:  # a decoder bug must end the session, not leave it waiting for ever
            log.debug("decoder failed", exc_info=True)
            self.error = SourceError(f"unexpected {type(exc).__name__} while decoding: {exc}")
        finally:
            self.buffer.close()


@dataclass
class Sample:
    """One analysed frame: its rows, and what a view needs to draw it."""

    rows: list[Row]
    arrived: float
    image: np.ndarray
    faces: list[Detection]
    ids: list[int]
    probs: np.ndarray


class Analyser:
    """Detector, tracker (with shot cuts) and classifier for one live source, kept across reconnects."""

    def __init__(self, detector: DetectorSpec, model: ModelCard, source_name: str) -> None:
        cv2.setNumThreads(1)  # the decoding thread has the other core
        self.detector = create_detector(detector)
        self.classifier = Classifier(model)
        self.tracker = FaceTracker()  # prunes its tracks by time: bounded over any stream length
        self.shots = ShotDetector()
        self.source_name = source_name

    def __call__(self, image: np.ndarray, index: int, timestamp_s: float, arrived: float) -> Sample:
        faces = self.detector.detect(image)
        shot = self.shots.update(image, timestamp_s)
        self.shots.cuts_s.clear()  # a growing list of cut times; live mode has no use for it
        ids = self.tracker.update(faces, timestamp_s, image=image, shot=shot)
        probs = self.classifier.classify(image, faces) if faces else np.empty((0, len(EMOTIONS)))
        rows = frame_rows(self.source_name, index, timestamp_s, shot, image.shape[:2], faces, ids, probs)
        return Sample(rows, arrived, image, faces, ids, probs)


@dataclass
class LiveStats:
    """What the summary reports; bounded (recent latencies only)."""

    samples: int = 0
    rows: int = 0
    faces: int = 0
    skipped: int = 0
    max_latency_s: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def record(self, sample: Sample, latency_s: float) -> None:
        self.samples += 1
        self.rows += len(sample.rows)
        self.faces += len(sample.faces)
        self.latencies.append(latency_s)
        self.max_latency_s = max(self.max_latency_s, latency_s)

    def percentile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[round(q) - 1]


Observer = Callable[[Sample], None]


def run(
    decoder: Decoder,
    analyser: Analyser,
    write: Callable[[Sequence[Row]], None],
    observers: Sequence[Observer],
    stop: threading.Event,
    *,
    fps: float,
    deadline: float | None = None,
    started: float | None = None,
) -> LiveStats:
    """Analyse the newest frame every 1/fps seconds until `stop`, the monotonic `deadline` or the source's end.

    `write` gets each sample's rows before the observers see them; the latency recorded is from the frame's
    arrival to the return of `write` (rows appended and flushed).
    """
    stats = LiveStats()
    interval = 1.0 / fps
    started = time.monotonic() if started is None else started
    due = started
    seq = 0
    while not stop.is_set():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            break
        if due > now:
            stop.wait(min(due - now, 0.5))
            continue
        got = decoder.buffer.take(seq, timeout=0.5)
        if got is None:
            if decoder.buffer.closed:
                break
            continue
        seq, arrival = got
        image = arrival.frame.to_ndarray(format="bgr24")
        sample = analyser(image, arrival.index, arrival.arrived - started, arrival.arrived)
        write(sample.rows)
        done = time.monotonic()
        stats.record(sample, done - arrival.arrived)
        for observe in observers:
            observe(sample)
        # The next sample is due one interval after this one's nominal time (or its arrival, after a stall).
        due = max(due, arrival.arrived) + interval
        if done >= due + interval:  # behind by whole samples: skip them rather than lag
            missed = int((done - due) / interval)
            stats.skipped += missed
            due += missed * interval
    return stats
