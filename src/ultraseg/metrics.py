"""Segmentation metrics, per image first, aggregates second (after nnU-Net's evaluation).

Conventions, used everywhere a number is reported:

- Dice and IoU are computed per image from the binary prediction. When both the prediction and the reference are
  empty the score is undefined: it is NaN, never 1.0, and such cases are reported apart.
- The headline aggregate is the mean over *lesion images* (reference not empty: benign and malignant). Normal
  images (empty reference) are scored by ``normal_clean``: the fraction of them with no predicted lesion pixel.
"""

from __future__ import annotations

import numpy as np


def confusion(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image true-positive, false-positive and false-negative pixel counts of boolean (N, H, W) arrays."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {target.shape}")
    pred, target = pred.astype(bool), target.astype(bool)
    axes = tuple(range(1, pred.ndim))
    tp = np.sum(pred & target, axis=axes, dtype=np.int64)
    fp = np.sum(pred & ~target, axis=axes, dtype=np.int64)
    fn = np.sum(~pred & target, axis=axes, dtype=np.int64)
    return tp, fp, fn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def dice(tp, fp, fn) -> np.ndarray:
    return _ratio(2 * np.asarray(tp), 2 * np.asarray(tp) + fp + fn)


def iou(tp, fp, fn) -> np.ndarray:
    return _ratio(tp, np.asarray(tp) + fp + fn)


def precision(tp, fp, fn) -> np.ndarray:
    return _ratio(tp, np.asarray(tp) + fp)


def recall(tp, fp, fn) -> np.ndarray:
    return _ratio(tp, np.asarray(tp) + fn)


def summarize(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Lesion-image mean Dice and IoU, and the fraction of normal images predicted clean (NaN if none)."""
    tp, fp, fn = confusion(pred, target)
    lesion = (tp + fn) > 0
    return {
        "dice": float(np.mean(dice(tp, fp, fn)[lesion])) if lesion.any() else float("nan"),
        "iou": float(np.mean(iou(tp, fp, fn)[lesion])) if lesion.any() else float("nan"),
        "normal_clean": float(np.mean(fp[~lesion] == 0)) if (~lesion).any() else float("nan"),
    }
