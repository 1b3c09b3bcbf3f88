"""Scanner shifts: how another hospital's scanner could change a BUSI scan, at fixed, seeded severities.

These are evaluation transforms, kept apart from training augmentation (:mod:`ultraseg.data.augment`) on purpose:
augmentation draws a random strength per sample, in network-size, normalised space, to teach invariance; a shift here
applies one named change at one stated severity to the whole test image at its own resolution (8-bit, before any
preprocessing, as a scanner would deliver it), with the same geometry applied to the reference mask, so the drop in
Dice it causes can be compared across models and runs. Each shift is deterministic given its seed. Neither module
imports the other: the marks and the field of view that both draw live in :mod:`ultraseg.scanner`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ultraseg.scanner import draw_marks, fan

SEVERITIES = ("mild", "moderate", "strong")


@dataclass(frozen=True)
class Shift:
    name: str
    description: str
    levels: tuple[float, float, float]
    """The parameter at the mild, moderate and strong severity."""
    apply: Callable[[np.ndarray, np.ndarray, float, np.random.Generator], tuple[np.ndarray, np.ndarray]]
    """``apply(image uint8 (H, W), mask bool (H, W), level, rng) -> (image, mask)``."""


def _lut(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    levels = np.arange(256, dtype=np.float64)
    return cv2.LUT(image, np.clip(np.rint(fn(levels)), 0, 255).astype(np.uint8))


def gain(image, mask, level, rng):
    return _lut(image, lambda x: x * level), mask


def tgc(image, mask, level, rng):
    """Time-gain compensation set differently: the gain falls linearly with depth to ``level`` at the bottom."""
    ramp = np.linspace(1.0, level, image.shape[0])[:, None]
    return np.clip(np.rint(image * ramp), 0, 255).astype(np.uint8), mask


def compression(image, mask, level, rng):
    """Another dynamic range / log-compression curve: a power ``level`` on the normalised grey level."""
    return _lut(image, lambda x: 255.0 * (x / 255.0) ** level), mask


def speckle(image, mask, level, rng):
    """Coarser, stronger speckle: a multiplicative field with grains of sigma ``level`` pixels and a coefficient of
    variation of 0.15 per pixel of grain."""
    field = cv2.GaussianBlur(rng.standard_normal(image.shape), (0, 0), level)
    field = np.clip(1.0 + field * (0.15 * level / field.std()), 0.0, None)
    return np.clip(np.rint(image * field), 0, 255).astype(np.uint8), mask


def blur(image, mask, level, rng):
    """A lower probe frequency: a Gaussian point-spread function of sigma ``level`` pixels."""
    return cv2.GaussianBlur(image, (0, 0), level), mask


def resolution(image, mask, level, rng):
    """Resolution loss: down to ``level`` of the size (area) and back up (linear)."""
    h, w = image.shape
    small = cv2.resize(image, (max(1, round(w * level)), max(1, round(h * level))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), mask


def _place(image: np.ndarray, mask: np.ndarray, sy: float, sx: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale the content by (sy, sx) about the top centre (the probe), padding with black or cropping, same size."""
    h, w = image.shape
    matrix = np.array([[sx, 0.0, (1 - sx) * w / 2], [0.0, sy, 0.0]])
    out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    ref = cv2.warpAffine(mask.astype(np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    return out, ref.astype(bool)


def zoom(image, mask, level, rng):
    """Depth / zoom: the scan content scaled by ``level`` (below 1 a deeper field of view, padded; above, cropped)."""
    return _place(image, mask, level, level)


def aspect(image, mask, level, rng):
    """Another aspect ratio: the content narrowed to ``level`` of its width and letterboxed in the same frame."""
    return _place(image, mask, 1.0, level)


def jpeg(image, mask, level, rng):
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(level)])
    return cv2.imdecode(data, cv2.IMREAD_GRAYSCALE), mask


def annotations(image, mask, level, rng):
    """Burned-in marks: ``level`` sets of calipers and a line of text (:func:`draw_marks`)."""
    out = image.copy()
    draw_marks(out, int(level), rng)
    return out, mask


def sector(image, mask, level, rng):
    """A fan-shaped field of view of half-angle ``level`` degrees from the top centre; nothing is seen outside it,
    so the reference keeps only the lesion inside."""
    inside = fan(image.shape, level, 0.05)
    return np.where(inside, image, 0).astype(np.uint8), mask & inside


SHIFTS: tuple[Shift, ...] = (
    Shift("gain", "overall gain x level", (0.8, 0.6, 0.4), gain),
    Shift("tgc", "gain falling with depth to x level at the bottom", (0.8, 0.6, 0.4), tgc),
    Shift("compression", "grey-level power curve (dynamic range)", (1.25, 1.5, 2.0), compression),
    Shift("speckle", "coarser, stronger speckle, grain sigma in px", (1.0, 2.0, 3.0), speckle),
    Shift("blur", "lower probe frequency, Gaussian sigma in px", (1.0, 2.0, 3.0), blur),
    Shift("resolution", "down to this fraction of the size and back", (0.75, 0.5, 0.33), resolution),
    Shift("zoom_out", "content scaled down (deeper field of view), padded", (0.85, 0.7, 0.6), zoom),
    Shift("zoom_in", "content scaled up, cropped", (1.15, 1.3, 1.4), zoom),
    Shift("aspect", "content narrowed to this share of the width, letterboxed", (0.85, 0.7, 0.55), aspect),
    Shift("jpeg", "JPEG quality", (50, 25, 10), jpeg),
    Shift("annotations", "sets of burned-in calipers and text", (1, 3, 6), annotations),
    Shift("sector", "fan-shaped field of view, half-angle in degrees", (50, 40, 30), sector),
)


def by_name(name: str) -> Shift:
    for shift in SHIFTS:
        if shift.name == name:
            return shift
    raise KeyError(f"unknown shift {name!r}; known: {', '.join(s.name for s in SHIFTS)}")


def apply(shift: Shift, severity: str, image: np.ndarray, mask: np.ndarray, seed: int,
          index: int) -> tuple[np.ndarray, np.ndarray]:
    """``shift`` at ``severity`` on one uint8 image and its boolean mask; the random draws depend only on the seed,
    the shift, the severity and the image's index, so a run is repeatable and images do not share draws."""
    level = shift.levels[SEVERITIES.index(severity)]
    key = [seed, SHIFTS.index(shift), SEVERITIES.index(severity), index]
    out, ref = shift.apply(np.ascontiguousarray(image, np.uint8), mask.astype(bool), level,
                           np.random.default_rng(np.random.SeedSequence(key)))
    return out.astype(np.uint8), ref.astype(bool)
