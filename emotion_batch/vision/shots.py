"""Hard cuts: numbering the shots of a video so that no track is carried from one shot into the next.

A frame's signature is a colour histogram (HSV, 8 x 4 x 4 bins) of a strided thumbnail about 96 px wide, so it
costs about 0.1-0.3 ms per frame whatever the resolution (no resize of the full frame, just a view with a
stride). Two consecutive examined frames belong to different shots when half the L1 distance between their
histograms (0 = same colours, 1 = nothing in common) exceeds a threshold that depends on how far apart in time
they are, because within a shot the content drifts with time (camera pans, people walking):

measured on the 8 shared videos (`benchmarks/tracking.py --shots`), the distance between

=========================  ==========================  =============================
frames compared            largest within a shot       smallest across a hard cut
=========================  ==========================  =============================
every decoded frame        0.07                        0.31 (the Hamilton clip)
2 samples per second       0.21 (a pan, a face leaving) 0.38 (the Hamilton clip)
=========================  ==========================  =============================

so the threshold is 0.18 for frames up to 0.1 s apart and 0.30 beyond. Feeding only the sampled frames is free
(they are decoded and converted anyway) and finds every cut in the shared videos; its margin is narrower, and a
cut between two samples is placed at the first sample after it, which is what the tracker needs. Feeding every
decoded frame gives a wide margin and the exact cut frame, but the reader must then convert every frame to BGR
and may no longer skip decoding frames (see `media.decoding`): that costs more than the whole tracker (numbers in
the benchmark), so the default integration feeds the sampled frames only.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Half-L1 histogram distance above which two frames are in different shots, for frames at most
#: `NEAR_GAP_S` apart and for frames further apart.
NEAR_THRESHOLD = 0.18
FAR_THRESHOLD = 0.30
NEAR_GAP_S = 0.1
_THUMB_WIDTH = 96
_BINS = (8, 4, 4)


def frame_signature(image: np.ndarray) -> np.ndarray:
    """A normalised HSV histogram (128 floats) of a strided ~96-px thumbnail of a BGR (or grey) frame."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    step = max(1, image.shape[1] // _THUMB_WIDTH)
    small = np.ascontiguousarray(image[::step, ::step, :3])
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(_BINS), [0, 180, 0, 256, 0, 256]).ravel()
    total = float(hist.sum())
    return hist / total if total > 0 else hist


def signature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance between two signatures: 0 for the same colours, 1 for disjoint ones."""
    return 0.5 * float(np.abs(a - b).sum())


class ShotDetector:
    """Numbers the shots of one video; feed frames in time order, every decoded frame or just the sampled ones.

    `update(image, timestamp_s)` returns the shot id of that frame: 0 for the first shot, +1 at each hard cut.
    """

    def __init__(
        self,
        near_threshold: float = NEAR_THRESHOLD,
        far_threshold: float = FAR_THRESHOLD,
        near_gap_s: float = NEAR_GAP_S,
    ) -> None:
        self.near_threshold = near_threshold
        self.far_threshold = far_threshold
        self.near_gap_s = near_gap_s
        self.shot = 0
        #: Frame times (seconds) at which a new shot started, after the first.
        self.cuts_s: list[float] = []
        #: The distance to the previous frame at the last update (0 for the first frame).
        self.last_distance = 0.0
        self._previous: np.ndarray | None = None
        self._previous_s: float | None = None

    def threshold(self, gap_s: float | None) -> float:
        """The cut threshold for two frames `gap_s` seconds apart (None: unknown, treated as far apart)."""
        return self.near_threshold if gap_s is not None and gap_s <= self.near_gap_s else self.far_threshold

    def update(self, image: np.ndarray, timestamp_s: float | None = None) -> int:
        """The shot id of this frame (BGR or grey), which follows the previously fed one."""
        return self.update_signature(frame_signature(image), timestamp_s)

    def update_signature(self, signature: np.ndarray, timestamp_s: float | None = None) -> int:
        """As `update`, for a signature already computed with `frame_signature` (e.g. in another thread)."""
        if self._previous is not None:
            gap = None
            if timestamp_s is not None and self._previous_s is not None:
                gap = timestamp_s - self._previous_s
            self.last_distance = signature_distance(self._previous, signature)
            if self.last_distance > self.threshold(gap):
                self.shot += 1
                self.cuts_s.append(timestamp_s if timestamp_s is not None else float("nan"))
        self._previous, self._previous_s = signature, timestamp_s
        return self.shot
