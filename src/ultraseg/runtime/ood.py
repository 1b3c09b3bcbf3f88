"""Whether a frame lies within what the model was trained on, before any lesion answer is given.

Two checks, cheapest first. :func:`frame_problem` refuses frames that carry no scan at all (not finite after a bad
rescale, constant, smaller than the file's ``min_side``) before the network runs. :class:`OodCheck` then measures
how far the frame lies from the training scans: the Mahalanobis distance of its pooled deepest features (the model
file's ``features`` output, added at deployment by :mod:`ultraseg.ood`) and, where the file stores them, of cheap
statistics of its grey levels and texture (:func:`frame_stats`). A network that normalises each image sees a
photograph's or a noise frame's deep features much as a scan's; the frame's own statistics tell them apart. Each
block's squared distance is divided by its mean over the training scans, so that neither dominates, and a frame
beyond the threshold the deploy stage set on val is flagged. Both live in the file's ``ood`` metadata; a file
without them is not checked, and a file written before the statistics existed is checked on its features alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ultraseg.runtime.sources import to_grey

FEATURES = "features"
"""The graph output of pooled deepest features, (N, K) float32."""
NOT_CHECKED = "not checked"
"""The reason given for every frame by a model file without the ``features`` output or its ``ood`` metadata."""
STATS_VERSION = 1
"""The definition of :func:`frame_stats` stored with a fitted Gaussian over them; a file that names another is
refused rather than compared with different numbers."""
STATS_SIDE = 128
"""Side (px) of the square copy the statistics are computed on: cheap at any frame size, and the texture is then
measured relative to the field of view rather than to the grabber's pixel count."""
STATS = ("q05", "q25", "q50", "q75", "q95", "dark", "bright", "speckle_cv90", "log_grad_x", "log_grad_y",
         "log_grad_x_over_y", "entropy", "mode", "top_minus_bottom", "colour")
"""What :func:`frame_stats` returns, in order."""


def frame_problem(image: np.ndarray, min_side: int = 1) -> str:
    """Why ``image`` holds no scan the model could read ("" when none): a non-finite value, a single level
    throughout, or a side below ``min_side``. Runs on the array as given, before it is mapped to 8 bits."""
    array = np.asarray(image)
    if array.size == 0:
        return "empty frame"
    if min(array.shape[:2]) < min_side:
        return f"too small ({array.shape[0]}x{array.shape[1]} px, below {min_side} px)"
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        return "not finite"
    if array.min() == array.max():
        return "constant frame"
    return ""


def frame_stats(image: np.ndarray) -> np.ndarray:
    """Grey-level and texture statistics (:data:`STATS`) of a frame as the runtime sees it (8-bit grey, as
    :func:`~ultraseg.runtime.sources.to_grey` maps it), on a :data:`STATS_SIDE` square copy: grey-level quantiles;
    square roots of the shares of near-black and near-white pixels (a scan has black margins and few saturated
    pixels; a text screen or a logo the reverse); the 90th percentile of the local coefficient of variation over
    tissue (speckle); log energies of the horizontal and vertical gradients and their ratio (text and ramps run one
    way); the entropy and the square root of the largest bin of a 64-bin histogram; the mean level of the top third
    minus that of the bottom third (echoes fade with depth); and the square root of the mean colour saturation (a
    B-mode frame is grey)."""
    levels, rgb = shrunk(image)
    colour = 0.0 if rgb is None else float(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1].mean())
    counts = np.bincount(levels.ravel(), minlength=256)
    g = levels.astype(np.float32) / 255
    mean = cv2.blur(g, (5, 5))
    std = np.sqrt(np.maximum(cv2.blur(g * g, (5, 5)) - mean * mean, 0))
    tissue = mean > 0.08
    cv = std[tissue] / mean[tissue]
    cv90 = float(np.partition(cv, int(0.9 * (len(cv) - 1)))[int(0.9 * (len(cv) - 1))]) if len(cv) else 0.0
    gx, gy = (cv2.norm(cv2.Sobel(g, cv2.CV_32F, dx, 1 - dx), cv2.NORM_L2SQR) / g.size + 1e-6 for dx in (1, 0))
    hist = counts.reshape(64, 4).sum(axis=1) / levels.size
    entropy = float(-(hist[hist > 0] * np.log(hist[hist > 0])).sum())
    rows = g.mean(axis=1)
    third = STATS_SIDE // 3
    quantiles = np.searchsorted(np.cumsum(counts), np.array([0.05, 0.25, 0.5, 0.75, 0.95]) * levels.size) / 255
    return np.array([*quantiles, math.sqrt(counts[:11].sum() / levels.size),
                     math.sqrt(counts[245:].sum() / levels.size), cv90, math.log(gx), math.log(gy), math.log(gx / gy),
                     entropy, math.sqrt(float(hist.max())), float(rows[:third].mean() - rows[-third:].mean()),
                     math.sqrt(max(colour, 0.0))], np.float64)


def shrunk(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The frame's 8-bit grey levels on a :data:`STATS_SIDE` square (area-averaged by a whole factor, OpenCV's fast
    path, then linearly resized), and for a colour frame a float32 RGB subsample of about 64 rows, in any unit
    (saturation does not depend on it; None for grey): shrinking first keeps the statistics cheap at any size."""
    array = np.ascontiguousarray(image)
    colour = array[..., :3] if array.ndim == 3 and array.shape[2] >= 3 else None
    if array.ndim == 2 and array.dtype == np.uint8:
        grey = array
    elif colour is not None and array.dtype == np.uint8:  # ITU-R 601 luma, as to_grey, in OpenCV's fixed point
        grey = cv2.cvtColor(array, cv2.COLOR_RGBA2GRAY if array.shape[2] == 4 else cv2.COLOR_RGB2GRAY)
    else:
        grey = to_grey(array.astype(np.float32) if array.dtype == bool else array)
    step = max(1, min(grey.shape) // STATS_SIDE)
    height, width = grey.shape[0] // step * step, grey.shape[1] // step * step
    grey = cv2.resize(grey[:height, :width], (width // step, height // step), interpolation=cv2.INTER_AREA)
    grey = cv2.resize(grey, (STATS_SIDE, STATS_SIDE), interpolation=cv2.INTER_LINEAR)
    if colour is None:
        return grey, None
    stride = max(1, min(colour.shape[:2]) // 64)
    return grey, colour[::stride, ::stride].astype(np.float32)


@dataclass(frozen=True)
class Gaussian:
    """One block of the check: ``whiten @ (x - mean)`` has unit covariance over the training scans, and ``scale``
    is the mean of its squared norm there (what the block's squared distance is divided by)."""

    mean: np.ndarray
    whiten: np.ndarray
    scale: float = 1.0

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Gaussian:
        return cls(mean=np.asarray(meta["mean"], np.float64), whiten=np.asarray(meta["whiten"], np.float64),
                   scale=float(meta.get("scale", 1.0)))

    def to_meta(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "whiten": self.whiten.tolist(), "scale": self.scale}

    def squared(self, x: np.ndarray) -> float:
        """Squared Mahalanobis distance of ``x`` divided by ``scale`` (inf if not finite)."""
        d = float(np.sum((self.whiten @ (np.asarray(x, np.float64).ravel() - self.mean)) ** 2)) / self.scale
        return d if np.isfinite(d) else float("inf")


@dataclass(frozen=True)
class OodCheck:
    """The training scans' Gaussian over the deep features (``mean`` (K,), ``whiten`` (K, K), ``scale``), the
    optional one over :func:`frame_stats` (``stats``), and the distance ``threshold`` beyond which a frame is
    flagged."""

    mean: np.ndarray
    whiten: np.ndarray
    threshold: float
    min_side: int = 1
    scale: float = 1.0
    stats: Gaussian | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> OodCheck:
        """The check stored in a file's ``ood`` metadata; one whose frame statistics are of another definition
        raises ValueError naming it."""
        deep = Gaussian.from_meta(meta)
        stats = meta.get("frame_stats")
        if stats is not None and stats.get("version") != STATS_VERSION:
            raise ValueError(f"ood metadata: frame statistics of version {stats.get('version')!r}; this runtime "
                             f"computes version {STATS_VERSION}")
        return cls(mean=deep.mean, whiten=deep.whiten, threshold=float(meta["threshold"]),
                   min_side=int(meta.get("min_side", 1)), scale=deep.scale,
                   stats=Gaussian.from_meta(stats) if stats is not None else None)

    def distance(self, features: np.ndarray, image: np.ndarray | None = None) -> float:
        """Distance of one frame from the training scans: its feature vector (K,) and, for a check with frame
        statistics, the frame itself (inf if not finite)."""
        d2 = Gaussian(self.mean, self.whiten, self.scale).squared(features)
        if self.stats is not None:
            if image is None:
                raise ValueError("this check also measures the frame's statistics: pass the frame")
            d2 += self.stats.squared(frame_stats(image))
        return math.sqrt(d2)

    def reason(self, features: np.ndarray, image: np.ndarray | None = None) -> str:
        """Why the frame lies outside the training scans ("" when it does not)."""
        d = self.distance(features, image)
        if d <= self.threshold:
            return ""
        return f"features far from the training scans (distance {d:.3g} > {self.threshold:.3g})"
