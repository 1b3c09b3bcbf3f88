"""From a probability map to the answer a user sees: the pixel threshold and the post-processing rule.

The rule is chosen on val by the deploy stage (:mod:`ultraseg.pipeline.deploy`), stored in the deployable ONNX file's
metadata and applied by the runtime (:mod:`ultraseg.runtime`), so evaluation, the command line and the viewer all
turn probabilities into masks the same way. NumPy and OpenCV only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class PostProcess:
    """``prob > threshold``, then: nothing at all unless the highest probability exceeds ``gate``; connected
    components (8-connected) smaller than ``min_area`` of the image removed; with ``keep_largest``, only the largest
    component kept. The defaults leave the thresholded mask as it is."""

    threshold: float = 0.5
    """Pixel probability above which a pixel is lesion."""
    gate: float = 0.0
    """The image shows a lesion only if its highest probability (the image-level score) exceeds this."""
    min_area: float = 0.0
    """Smallest lesion kept, as a fraction of the image's area (so the rule does not depend on the resolution)."""
    keep_largest: bool = False
    """Keep only the largest lesion: BUSI-like scans show one lesion in almost every image."""

    def __post_init__(self) -> None:
        for name in ("threshold", "gate", "min_area"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"postprocess.{name}: expected a value in [0, 1), got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PostProcess:
        """The rule stored in a model's metadata; unknown keys are refused, naming them."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"postprocess: unknown key {unknown[0]!r}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def apply(self, prob: np.ndarray) -> np.ndarray:
        """The boolean lesion mask of a probability map (H, W)."""
        mask = prob > self.threshold
        if not mask.any() or float(prob.max()) <= self.gate:
            return np.zeros(prob.shape, bool)
        if self.min_area <= 0 and not self.keep_largest:
            return mask
        # components are labelled inside the box around every lesion pixel: the same components, a fraction of the
        # pixels on a large frame
        x, y, width, height = cv2.boundingRect(mask.view(np.uint8))
        box = mask[y:y + height, x:x + width]
        count, labels = cv2.connectedComponents(box.view(np.uint8), connectivity=8)
        areas = _areas(labels, count)
        keep = areas >= self.min_area * prob.size
        if self.keep_largest and keep.any():
            keep &= areas == areas[keep].max()
            keep &= np.cumsum(keep) == 1  # one component even when two tie
        if keep.all():
            return mask
        out = np.zeros_like(mask)
        if keep.sum() == 1:  # the common case, and a comparison is cheaper than a lookup
            out[y:y + height, x:x + width] = labels == 1 + int(np.argmax(keep))
        else:
            out[y:y + height, x:x + width] = np.concatenate([[False], keep])[labels]
        return out

    def answer(self, prob: np.ndarray, present: bool | None, fill_empty: bool = False) -> np.ndarray:
        """The mask a user sees under the image-level answer ``present``: empty where it says no lesion; the rule's
        mask where it says lesion, or with ``fill_empty`` :meth:`around_peak` where the rule draws nothing. None:
        no image-level answer (files without a presence output), the rule alone decides."""
        if present is None:
            return self.apply(prob)
        if not present:
            return np.zeros(prob.shape, bool)
        mask = self.apply(prob)
        return self.around_peak(prob) if fill_empty and not mask.any() else mask

    @staticmethod
    def around_peak(prob: np.ndarray) -> np.ndarray:
        """Where to point when the image-level answer is "lesion" but no pixel passes the threshold: the pixels of
        at least half the highest probability that are connected (8-connected) to the most probable pixel."""
        if prob.size == 0 or not float(prob.max()) > 0:
            return np.zeros(prob.shape, bool)
        row, col = np.unravel_index(int(np.argmax(prob)), prob.shape)
        near = np.ascontiguousarray(prob >= 0.5 * float(prob[row, col])).view(np.uint8)
        # a flood fill from the peak visits the region alone, where labelling every component reads the whole frame
        region = np.zeros((prob.shape[0] + 2, prob.shape[1] + 2), np.uint8)
        cv2.floodFill(near, region, (int(col), int(row)), 1, 0, 0, 8 | cv2.FLOODFILL_MASK_ONLY | (1 << 8))
        return region[1:-1, 1:-1].view(bool)


@dataclass(frozen=True)
class Presence:
    """The image-level answer stored by the deploy stage: the presence logit calibrated by ``temperature``
    (``sigmoid(logit / temperature)``) and compared with ``threshold``, the operating point chosen on val to keep
    ``sensitivity`` of the val lesion scans."""

    temperature: float
    threshold: float
    fill_empty: bool = False
    """Where the answer is "lesion" but the rule's mask is empty, show :meth:`PostProcess.around_peak`."""
    sensitivity: float | None = None
    """The val sensitivity target the threshold was chosen for (a record; the runtime does not use it)."""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"presence.temperature: expected a positive number, got {self.temperature!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"presence.threshold: expected a value in [0, 1], got {self.threshold!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Presence:
        """The answer stored in a model's metadata; unknown or missing keys are refused, naming them."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"presence: unknown key {unknown[0]!r}")
        missing = [key for key in ("temperature", "threshold") if key not in data]
        if missing:
            raise ValueError(f"presence: missing key {missing[0]!r}")
        return cls(**data)

    def probability(self, logit: float) -> float:
        """The calibrated presence probability of a raw logit (tanh form: no overflow at large logits; NaN stays
        NaN)."""
        z = float(logit) / self.temperature
        return float(0.5 * (1.0 + np.tanh(0.5 * z))) if z == z else float("nan")


def _areas(labels: np.ndarray, count: int) -> np.ndarray:
    """Pixels of components 1 .. count - 1; a comparison per component costs less than a histogram of the whole
    image while there are few, as in almost every frame, and OpenCV's full statistics cost more than either."""
    if count <= 4:
        return np.array([np.count_nonzero(labels == k) for k in range(1, count)], dtype=np.int64)
    return np.bincount(labels.ravel(), minlength=count)[1:]
