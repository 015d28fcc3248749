"""Synthetic videos with known identities for the tracker, and the identity metrics (IDF1, ID switches, ...).

Real faces are cut out of the shared photos at test time (YuNet finds them; nothing is committed) and pasted as
sprites onto generated backgrounds, moving along scripted paths: fast crossings with occlusion, a face that
grows (walks toward the camera), one that leaves the frame and comes back, one hidden behind a pillar, and a hard
cut after which one person stands where another stood a moment before. The truth is every visible face's box and
identity at every frame; identities are per shot ("p2@1"), so an id carried over a cut counts as a merge.

Importable by the benchmark (`benchmarks/tracking.py`): nothing here depends on pytest.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from emotion_batch.vision.detection import Detection
from emotion_batch.vision.tracking import min_cost_assignment

#: Photos whose faces become sprites (file, index of the face left to right); all distinct people.
SPRITE_SOURCES = [
    ("facerec_biden.jpg", 0),
    ("facerec_obama-720p.jpg", 0),
    ("facenetpytorch_kate_siegel.jpg", 0),
    ("facenetpytorch_paul_rudd.jpg", 0),
    ("deepface_img1.jpg", 0),
    ("pyfeat_single_face.jpg", 0),
    ("fer_justin.jpg", 0),
]
WIDTH, HEIGHT, FPS = 640, 360, 25.0


@dataclass
class Sprite:
    """A face cut-out: the padded crop and the face box inside it (x, y, w, h in crop pixels)."""

    image: np.ndarray
    face: tuple[float, float, float, float]


def load_sprites(photos: Path, detector, sources: Sequence[tuple[str, int]] = SPRITE_SOURCES) -> list[Sprite]:
    """Cut the chosen faces out of the shared photos, padded by 60% of the face size on each side."""
    sprites = []
    for name, which in sources:
        image = cv2.imdecode(np.fromfile(photos / name, dtype=np.uint8), cv2.IMREAD_COLOR)
        faces = sorted(detector.detect(image), key=lambda d: -d.w * d.h)
        face = sorted(faces[: which + 1], key=lambda d: d.x)[which]
        pad = 0.6
        x0, y0 = max(0, int(face.x - pad * face.w)), max(0, int(face.y - pad * face.h))
        x1 = min(image.shape[1], int(face.x + face.w * (1 + pad)))
        y1 = min(image.shape[0], int(face.y + face.h * (1 + pad)))
        sprites.append(Sprite(image[y0:y1, x0:x1].copy(), (face.x - x0, face.y - y0, face.w, face.h)))
    return sprites


#: A path: time (s) -> (face centre x, face centre y, face width in px), or None when the person is not there.
Path_ = Callable[[float], tuple[float, float, float] | None]


def _line(t0: float, t1: float, a: tuple[float, float, float], b: tuple[float, float, float]) -> Path_:
    def at(t: float):
        if not t0 <= t < t1:
            return None
        f = (t - t0) / (t1 - t0)
        return tuple(p + (q - p) * f for p, q in zip(a, b))

    return at


def _chain(*parts: Path_) -> Path_:
    def at(t: float):
        for part in parts:
            if (where := part(t)) is not None:
                return where
        return None

    return at


@dataclass
class Actor:
    sprite: int
    path: Path_
    depth: int  # larger = nearer the camera, drawn later


@dataclass
class Scenario:
    """Shots of (start, end, background seed, actors); pillars are drawn in front of everyone."""

    duration_s: float
    shots: list[tuple[float, float, int, list[Actor]]]
    pillars: list[tuple[int, int, int, int]] = field(default_factory=list)


def default_scenario() -> Scenario:
    """12 s, two shots: crossings with occlusion, growth, exit and return, a pillar, a cut with a stand-in."""
    first = [
        # p0 crosses left to right fast (~1.5 face widths per sample at 2 samples/s), behind p1.
        Actor(0, _line(0.0, 4.0, (40, 120, 70), (600, 140, 70)), depth=0),
        # p1 crosses right to left in front of p0 (they meet at ~2 s).
        Actor(1, _line(0.0, 4.0, (600, 150, 75), (60, 130, 75)), depth=2),
        # p2 walks toward the camera on the right: 55 px wide to 130 px wide.
        Actor(2, _line(0.0, 6.0, (520, 250, 55), (470, 200, 130)), depth=1),
        # p3 leaves to the left at 2 s and comes back at 3.5 s.
        Actor(
            3,
            _chain(
                _line(0.0, 2.0, (200, 270, 70), (-60, 270, 70)),
                _line(3.5, 6.0, (-60, 260, 70), (230, 260, 70)),
            ),
            depth=1,
        ),
    ]
    second = [
        # p4 stands where p2 stood at the cut, same size: only the cut tells them apart.
        Actor(4, _line(6.0, 12.0, (470, 200, 130), (430, 190, 120)), depth=1),
        # p5 and p6 cross; p5 passes behind the pillar at x 260-300.
        Actor(5, _line(6.0, 12.0, (80, 110, 80), (560, 120, 80)), depth=0),
        Actor(6, _line(6.5, 11.0, (600, 290, 65), (60, 280, 65)), depth=2),
        # p1 comes back in the new shot: a new identity there (truth is per shot).
        Actor(1, _line(7.0, 12.0, (150, 250, 60), (250, 240, 70)), depth=1),
    ]
    return Scenario(12.0, [(0.0, 6.0, 1, first), (6.0, 12.0, 2, second)], pillars=[(255, 0, 50, 200)])


def _background(seed: int) -> np.ndarray:
    """A smooth random colour field with some texture: different seeds give clearly different shots."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    back = cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 6, back.shape)
    return np.clip(back.astype(np.float64) * 0.8 + noise, 0, 255).astype(np.uint8)


def _paste(frame: np.ndarray, sprite: Sprite, cx: float, cy: float, width: float) -> tuple[float, ...] | None:
    """Draw the sprite so that its face is `width` px wide centred at (cx, cy); the visible face box."""
    fx, fy, fw, fh = sprite.face
    scale = width / fw
    image = cv2.resize(sprite.image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    x0, y0 = round(cx - (fx + fw / 2) * scale), round(cy - (fy + fh / 2) * scale)
    h, w = image.shape[:2]
    # A soft elliptical mask, so the sprite's own background does not make a hard rectangle.
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (int(w * 0.45), int(h * 0.48)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, w / 20))[..., None]
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(WIDTH, x0 + w), min(HEIGHT, y0 + h)
    if fx1 <= fx0 or fy1 <= fy0:
        return None
    region = frame[fy0:fy1, fx0:fx1].astype(np.float32)
    part = image[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0].astype(np.float32)
    m = mask[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    frame[fy0:fy1, fx0:fx1] = (region * (1 - m) + part * m).astype(np.uint8)
    return (cx - fw * scale / 2, cy - fh * scale / 2, fw * scale, fh * scale)


def _visible_fraction(box, covers: Iterable[tuple[float, float, float, float]]) -> float:
    """How much of a face box is inside the frame and not covered by nearer boxes (a grid estimate)."""
    x, y, w, h = box
    xs, ys = np.meshgrid(np.linspace(x, x + w, 12), np.linspace(y, y + h, 12))
    seen = (xs >= 0) & (xs < WIDTH) & (ys >= 0) & (ys < HEIGHT)
    for cx, cy, cw, ch in covers:
        seen &= ~((xs >= cx) & (xs < cx + cw) & (ys >= cy) & (ys < cy + ch))
    return float(seen.mean())


@dataclass
class Truth:
    """Per frame: (time, shot, [(identity, box)]) for faces at least 60% visible; `cut_frames` start new shots."""

    fps: float
    frames: list[tuple[float, int, list[tuple[str, tuple[float, float, float, float]]]]]
    cut_frames: list[int]


def write_synthetic_video(path: Path, sprites: Sequence[Sprite], scenario: Scenario | None = None) -> Truth:
    """Render the scenario to an MP4 (mp4v, 640x360, 25 fps) and return its truth."""
    scenario = scenario or default_scenario()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    frames, cuts = [], []
    backgrounds = {seed: _background(seed) for _, _, seed, _ in scenario.shots}
    n = round(scenario.duration_s * FPS)
    previous_shot = 0
    for k in range(n):
        t = k / FPS
        shot = max(i for i, (start, *_rest) in enumerate(scenario.shots) if t + 1e-9 >= start)
        if shot != previous_shot:
            cuts.append(k)
            previous_shot = shot
        _, _, seed, actors = scenario.shots[shot]
        frame = backgrounds[seed].copy()
        drawn = []
        for actor in sorted(actors, key=lambda a: a.depth):
            where = actor.path(t)
            if where is None:
                continue
            box = _paste(frame, sprites[actor.sprite], *where)
            if box is not None:
                drawn.append((f"p{actor.sprite}@{shot}", box))
        for x, y, w, h in scenario.pillars:
            cv2.rectangle(frame, (x, y), (x + w, y + h), (90, 90, 100), -1)
        faces = []
        for i, (identity, box) in enumerate(drawn):
            nearer = [b for _, b in drawn[i + 1 :]] + [tuple(map(float, p)) for p in scenario.pillars]
            if _visible_fraction(box, nearer) >= 0.6:
                faces.append((identity, box))
        frames.append((t, shot, faces))
        writer.write(frame)
    writer.release()
    return Truth(FPS, frames, cuts)


# --- metrics -------------------------------------------------------------------------------------------------------
def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def match_frame(truth_boxes: Sequence[Sequence[float]], boxes: Sequence[Sequence[float]], min_iou: float):
    """Pairs (truth index, box index) of a frame with the largest total IoU, each at least `min_iou`."""
    if not truth_boxes or not boxes:
        return []
    cost = np.array([[1.0 - iou(t, b) for b in boxes] for t in truth_boxes])
    return [(i, j) for i, j in min_cost_assignment(cost) if 1.0 - cost[i, j] >= min_iou]


@dataclass
class IdentityScores:
    """Identity metrics over matched detections (CLEAR-MOT switches, IDF1 of Ristani et al. 2016)."""

    idf1: float
    idp: float
    idr: float
    id_switches: int  # a truth identity matched to a different id than at its previous match
    fragments: int  # sum over truth identities of (distinct ids it received - 1)
    merges: int  # sum over ids of (distinct truth identities it covered - 1)
    cross_shot_ids: int  # ids that appear in more than one shot
    ids: int  # distinct ids given
    short_ids: int  # ids with at most two detections
    truth_identities: int
    matched: int
    truth_detections: int
    detections: int

    def line(self) -> str:
        return (
            f"IDF1 {self.idf1:.3f} (IDP {self.idp:.3f}, IDR {self.idr:.3f}), ID switches {self.id_switches}, "
            f"fragments {self.fragments}, merges {self.merges}, ids across shots {self.cross_shot_ids}, "
            f"ids {self.ids} for {self.truth_identities} people ({self.short_ids} with <= 2 samples), "
            f"matched {self.matched}/{self.truth_detections} truth detections, {self.detections} detections"
        )


def identity_scores(
    observations: Sequence[
        tuple[int, list[tuple[str | None, Sequence[float]]], list[tuple[int, Sequence[float]]]]
    ],
    min_iou: float = 0.3,
) -> IdentityScores:
    """Score tracked detections against truth, frame by frame.

    `observations`: per examined frame (shot, [(truth identity or None = ignore, box)], [(track id, box)]).
    A detection matched to an ignored truth box (a duplicate box, an ambiguous face) is left out of every count.
    """
    pairs: Counter[tuple[str, int]] = Counter()
    truth_count: Counter[str] = Counter()
    hyp_count: Counter[int] = Counter()
    last: dict[str, int] = {}
    switches = matched = 0
    ids_of: dict[str, set[int]] = defaultdict(set)
    truths_of: dict[int, set[str]] = defaultdict(set)
    shots_of: dict[int, set[int]] = defaultdict(set)
    for shot, truth, hyps in observations:
        links = dict(match_frame([b for _, b in truth], [b for _, b in hyps], min_iou))
        ignored = {links[i] for i, (name, _) in enumerate(truth) if name is None and i in links}
        for j, (tid, _) in enumerate(hyps):
            if j not in ignored:
                hyp_count[tid] += 1
                shots_of[tid].add(shot)
        for i, (name, _) in enumerate(truth):
            if name is None:
                continue
            truth_count[name] += 1
            if i not in links:
                continue
            tid = hyps[links[i]][0]
            matched += 1
            pairs[name, tid] += 1
            ids_of[name].add(tid)
            truths_of[tid].add(name)
            if name in last and last[name] != tid:
                switches += 1
            last[name] = tid
    names, tids = sorted(truth_count), sorted(hyp_count)
    idtp = 0
    if names and tids:
        overlap = np.array([[pairs[n, t] for t in tids] for n in names], dtype=np.float64)
        idtp = int(sum(overlap[i, j] for i, j in min_cost_assignment(-overlap)))
    n_truth, n_hyp = sum(truth_count.values()), sum(hyp_count.values())
    return IdentityScores(
        idf1=2 * idtp / (n_truth + n_hyp) if n_truth + n_hyp else 1.0,
        idp=idtp / n_hyp if n_hyp else 1.0,
        idr=idtp / n_truth if n_truth else 1.0,
        id_switches=switches,
        fragments=sum(len(v) - 1 for v in ids_of.values()),
        merges=sum(len(v) - 1 for v in truths_of.values()),
        cross_shot_ids=sum(1 for v in shots_of.values() if len(v) > 1),
        ids=len(hyp_count),
        short_ids=sum(1 for c in hyp_count.values() if c <= 2),
        truth_identities=len(truth_count),
        matched=matched,
        truth_detections=n_truth,
        detections=n_hyp,
    )


def box_of(face: Detection) -> tuple[float, float, float, float]:
    return (face.x, face.y, face.w, face.h)


def nearest_truth(truth: Truth, timestamp_s: float):
    """The truth frame at a sampled frame's time (the synthetic videos have exact, constant timestamps)."""
    k = min(len(truth.frames) - 1, max(0, round(timestamp_s * truth.fps)))
    return truth.frames[k]
