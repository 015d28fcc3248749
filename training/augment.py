"""Training augmentation on uint8 face crops: one composed affine warp plus what real video crops suffer.

Every geometric change (rotation, scale, translation, shear, the runtime's crop jitter) is folded into one
2x3 matrix and applied with a single ``cv2.warpAffine``, so a warped face is resampled once, not four times,
and a face that draws no warp is returned untouched. The photometric steps then imitate faces found in real
recordings: small faces (downscaled to 20-40 px and back), compression, sensor noise, gamma and brightness,
slight blur.

All randomness comes from ``np.random.default_rng([seed, epoch, batch])``: the same run, epoch and batch
always see the same augmented images, which is what makes ``--resume`` reproduce the data exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; ``strength`` scales every geometric range (0 turns augmentation off)."""

    strength: float = 1.0
    flip: float = 0.5
    affine: float = 0.8  # probability of any warp at all; the rest see the crop untouched
    rotation_deg: float = 15.0
    scale: float = 0.12  # zoom drawn from [1 - scale, 1 + scale]
    translate: float = 0.08  # fraction of the side
    shear: float = 0.08
    low_resolution: float = 0.25  # probability of shrinking the face to 20-40 px and back
    low_resolution_px: tuple[int, int] = (20, 40)
    jpeg: float = 0.25
    jpeg_quality: tuple[int, int] = (20, 85)
    noise: float = 0.2
    noise_sigma: tuple[float, float] = (2.0, 8.0)
    gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.65, 1.5)
    brightness: float = 0.5  # probability of a brightness/contrast change
    brightness_shift: float = 30.0
    contrast: float = 0.3
    blur: float = 0.15
    blur_sigma: tuple[float, float] = (0.4, 1.0)
    erasing: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


def affine_matrix(
    side: int, angle_deg: float, scale: float, shear: float, tx: float, ty: float, flip: bool
) -> np.ndarray:
    """The 2x3 matrix of flip, then rotation/scale/shear about the centre, then translation (pixels)."""
    c = (side - 1) / 2.0
    to_origin = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]], dtype=np.float64)
    mirror = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
    a = math.radians(angle_deg)
    rotate = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    shear_m = np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    zoom = np.diag([scale, scale, 1.0])
    back = np.array([[1, 0, c + tx], [0, 1, c + ty], [0, 0, 1]], dtype=np.float64)
    return (back @ zoom @ rotate @ shear_m @ mirror @ to_origin)[:2]


def _warp(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    side = image.shape[0]
    flip = bool(rng.random() < cfg.flip)
    if cfg.strength <= 0 or rng.random() >= cfg.affine:
        return image[:, ::-1].copy() if flip else image  # a mirror moves whole pixels: no resampling
    s = cfg.strength
    angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg) * s
    scale = 1.0 + rng.uniform(-cfg.scale, cfg.scale) * s
    shear = rng.uniform(-cfg.shear, cfg.shear) * s
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, size=2) * s * side
    matrix = affine_matrix(side, angle, scale, shear, tx, ty, flip)
    return cv2.warpAffine(
        image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def _photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    side = image.shape[0]
    out = image
    if rng.random() < cfg.low_resolution:
        small = int(rng.integers(cfg.low_resolution_px[0], cfg.low_resolution_px[1] + 1))
        if small < side:
            out = cv2.resize(out, (small, small), interpolation=cv2.INTER_AREA)
            out = cv2.resize(out, (side, side), interpolation=cv2.INTER_LINEAR)
    if rng.random() < cfg.blur:
        out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(*cfg.blur_sigma)))
    values = None  # float work is done once, then rounded back to uint8
    if rng.random() < cfg.gamma:
        values = 255.0 * (out.astype(np.float32) / 255.0) ** float(rng.uniform(*cfg.gamma_range))
    if rng.random() < cfg.brightness:
        values = out.astype(np.float32) if values is None else values
        mean = float(values.mean())
        factor = 1.0 + float(rng.uniform(-cfg.contrast, cfg.contrast))
        values = (
            (values - mean) * factor + mean + float(rng.uniform(-cfg.brightness_shift, cfg.brightness_shift))
        )
    if rng.random() < cfg.noise:
        values = out.astype(np.float32) if values is None else values
        values = values + rng.normal(0.0, float(rng.uniform(*cfg.noise_sigma)), size=values.shape)
    if values is not None:
        out = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if rng.random() < cfg.jpeg:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if ok else None
        if decoded is not None:
            out = decoded
    if rng.random() < cfg.erasing:
        area = rng.uniform(0.02, 0.25) * side * side
        h = int(np.clip(round(math.sqrt(area * rng.uniform(0.5, 2.0))), 1, side))
        w = int(np.clip(round(area / h), 1, side))
        top, left = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
        out = out.copy() if out is image else out
        out[top : top + h, left : left + w] = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    return out


def augment_image(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One uint8 [S, S] face -> an augmented uint8 [S, S] face (the input itself when nothing was drawn)."""
    return _photometric(_warp(image, rng, cfg), rng, cfg)


def augment_batch(images: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    return np.stack([augment_image(image, rng, cfg) for image in images])


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator for one batch of one epoch: independent of what ran before, so resume is exact."""
    return np.random.default_rng([seed, epoch, batch])
