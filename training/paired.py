"""Is model B better than model A on the benchmark, or only luckier? A paired bootstrap over the faces.

Both models are scored on the same faces in the same scenes (`generalisation` is seeded), so each condition's
``outcomes`` line up face by face. Resampling the faces (the same draw for both models, and for every condition
at once) gives an interval for each difference and for the difference of the robustness suite's mean, which
averages conditions that share their faces. Conditions with few scored faces (30 px in a frame: YuNet finds
about 14% of them) have wide intervals; a difference inside its interval's reach of zero is not evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: Draws of the bootstrap; the interval is the central 95% of the differences they give.
DRAWS = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """One condition: A's and B's accuracy on the faces both were scored on, B - A, and its 95% interval."""

    name: str
    images: int
    a: float
    b: float
    low: float
    high: float

    @property
    def difference(self) -> float:
        return self.b - self.a

    @property
    def clear(self) -> bool:
        """The interval leaves zero out: the difference is larger than resampling the faces explains."""
        return self.low > 0 or self.high < 0


def _marks(text: str) -> tuple[np.ndarray, np.ndarray]:
    chars = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    if not np.isin(chars, np.frombuffer(b"01-", dtype=np.uint8)).all():
        raise ValueError("outcomes hold only '1', '0' and '-'")
    return chars == ord("1"), chars != ord("-")


def paired_differences(
    a: Mapping[str, str],
    b: Mapping[str, str],
    mean_of: tuple[str, ...] = (),
    draws: int = DRAWS,
    seed: int = 0,
) -> list[PairedDifference]:
    """B - A for every condition both have (outcome strings by name), plus ``mean`` over ``mean_of`` if given.

    A face counts in a condition when both models were scored on it there. Raises ValueError when the two
    were measured on different numbers of faces (another split or ``--limit``).
    """
    names = [name for name in a if name in b]
    sizes = {len(a[name]) for name in names} | {len(b[name]) for name in names}
    if len(sizes) > 1:
        raise ValueError(
            f"the outcomes cover different numbers of faces ({sorted(sizes)}); compare results of "
            "the same split, seed and --limit"
        )
    faces = sizes.pop() if sizes else 0
    counts = (
        np.random.default_rng(seed).multinomial(faces, np.full(faces, 1 / faces), size=draws)
        if faces
        else None
    )
    found: dict[str, tuple[float, float, np.ndarray]] = {}
    out = []
    for name in names:
        right_a, scored_a = _marks(a[name])
        right_b, scored_b = _marks(b[name])
        both = scored_a & scored_b
        n = int(both.sum())
        if n == 0 or counts is None:
            continue
        weights = counts[:, both].astype(np.float64)
        total = np.maximum(weights.sum(axis=1), 1.0)
        drawn = (weights @ right_b[both] - weights @ right_a[both]) / total
        acc_a, acc_b = float(right_a[both].mean()), float(right_b[both].mean())
        found[name] = (acc_a, acc_b, drawn)
        out.append(_difference(name, n, acc_a, acc_b, drawn))
    if mean_of:
        missing = [name for name in mean_of if name not in found]
        if missing:
            raise ValueError(f"no outcomes for {', '.join(missing)} in both results; cannot compare the mean")
        parts = [found[name] for name in mean_of]
        out.append(
            _difference(
                "mean",
                faces,
                float(np.mean([p[0] for p in parts])),
                float(np.mean([p[1] for p in parts])),
                np.mean([p[2] for p in parts], axis=0),
            )
        )
    return out


def _difference(name: str, images: int, a: float, b: float, drawn: np.ndarray) -> PairedDifference:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(drawn, [tail, 100 - tail])
    return PairedDifference(name, images, a, b, float(low), float(high))
