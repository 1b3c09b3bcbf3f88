"""Whether a frame lies within what the model was trained on, before any lesion answer is given.

Two checks, cheapest first. :func:`frame_problem` refuses frames that carry no scan at all (not finite after a bad
rescale, constant, smaller than the file's ``min_side``) before the network runs. :class:`OodCheck` then measures
the Mahalanobis distance of the frame's pooled deepest features (the model file's ``features`` output, added at
deployment by :mod:`ultraseg.ood`) from the training scans' Gaussian, and flags a frame beyond the threshold that
the deploy stage set on val. Both live in the file's ``ood`` metadata; a file without them is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FEATURES = "features"
"""The graph output of pooled deepest features, (N, K) float32."""
NOT_CHECKED = "not checked"
"""The reason given for every frame by a model file without the ``features`` output or its ``ood`` metadata."""


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


@dataclass(frozen=True)
class OodCheck:
    """A Gaussian over the training scans' features: ``mean`` (K,), ``whiten`` (K, K) with
    ``whiten @ (f - mean)`` of unit covariance, and the distance ``threshold`` beyond which a frame is flagged."""

    mean: np.ndarray
    whiten: np.ndarray
    threshold: float
    min_side: int = 1

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> OodCheck:
        return cls(mean=np.asarray(meta["mean"], np.float64), whiten=np.asarray(meta["whiten"], np.float64),
                   threshold=float(meta["threshold"]), min_side=int(meta.get("min_side", 1)))

    def distance(self, features: np.ndarray) -> float:
        """Mahalanobis distance of one feature vector (K,) from the training scans (inf if not finite)."""
        d = float(np.linalg.norm(self.whiten @ (np.asarray(features, np.float64).ravel() - self.mean)))
        return d if np.isfinite(d) else float("inf")

    def reason(self, features: np.ndarray) -> str:
        """Why the features lie outside the training scans ("" when they do not)."""
        d = self.distance(features)
        if d <= self.threshold:
            return ""
        return f"features far from the training scans (distance {d:.3g} > {self.threshold:.3g})"
