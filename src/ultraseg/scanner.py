"""What a scanner draws on a frame besides the tissue: burned-in calipers and text, and the fan-shaped field of view of
a convex probe.

BUSI marks many lesions, and other scanners show a sector rather than a rectangle, so both the evaluation shifts
(:mod:`ultraseg.shifts`, one stated severity on the scan as delivered) and training augmentation
(:mod:`ultraseg.data.augment`, a random count or angle per sample on network-size images) draw them, with this code.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def draw_marks(canvas: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Draw ``count`` sets of calipers (a dotted line between two crosses) and a line of text on ``canvas`` (uint8,
    in place) at 255, sized for its resolution."""
    h, w = canvas.shape
    scale = max(h, w) / 256
    for _ in range(count):
        (x0, y0), (x1, y1) = (rng.uniform([0.1 * w, 0.15 * h], [0.9 * w, 0.9 * h]) for _ in range(2))
        steps = max(2, int(math.hypot(x1 - x0, y1 - y0) / (6 * scale)))
        for t in np.linspace(0, 1, steps):
            cv2.circle(canvas, (round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))), max(1, round(scale)), 255, -1)
        for x, y in ((x0, y0), (x1, y1)):
            cv2.drawMarker(canvas, (round(x), round(y)), 255, cv2.MARKER_CROSS, round(8 * scale), max(1, round(scale)))
        text = f"{rng.uniform(0.3, 3.0):.2f} cm"
        origin = (round(rng.uniform(0.05, 0.6) * w), round(rng.uniform(0.1, 0.95) * h))
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.35 * scale, 255, max(1, round(scale)))


def fan(shape: tuple[int, int], half_angle: float, apex: float) -> np.ndarray:
    """Boolean field of view of a convex probe: within ``half_angle`` degrees of the vertical through the top
    centre, seen from an apex ``apex`` (a fraction of the height) above the top edge."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.degrees(np.arctan2(np.abs(xx - (w - 1) / 2), yy + apex * h)) <= half_angle
