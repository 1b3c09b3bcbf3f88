"""The image-level answer, "is there a lesion at all": calibration of the presence logit and the operating point.

A network with a presence head (:class:`ultraseg.models.blocks.PresenceHead`) gives one logit per image. The deploy
stage turns it into a probability by temperature scaling (Guo et al., 2017, arXiv:1706.04599: one scalar ``T``,
``p = sigmoid(logit / T)``, fitted by likelihood on val), and chooses the operating point on val so that at least a
target share of lesion scans is answered "lesion". Both are stored in the deployable file; the runtime applies them.

How well any image-level score answers the question is measured here too, wherever a model is scored
(:func:`image_level`): ROC AUC with a stratified bootstrap CI, sensitivity and specificity at an operating point
with Wilson CIs (:func:`ultraseg.metrics.wilson_ci`), and calibration (expected calibration error, Brier score).
A *lesion image* has a non-empty reference; a *normal image* an empty one. NumPy and SciPy only.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit

from ultraseg.metrics import roc_auc, wilson_ci

TEMPERATURE_RANGE = (0.05, 20.0)
"""Temperatures searched: far wider than a network trained with cross-entropy needs."""
ECE_BINS = 10
"""Equal-width probability bins of the expected calibration error (Guo et al., 2017)."""


def _labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores, labels


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` that maximises the likelihood of ``labels`` under ``sigmoid(logits / T)``."""
    logits, labels = _labels(logits, labels)
    if labels.all() or not labels.any():
        raise ValueError("fitting a temperature needs both lesion and normal images")
    sign = np.where(labels, 1.0, -1.0)

    def nll(log_t: float) -> float:
        return float(-log_expit(sign * logits / np.exp(log_t)).mean())

    low, high = np.log(TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


def calibrate(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Presence probabilities ``sigmoid(logits / temperature)``."""
    return expit(np.asarray(logits, np.float64) / temperature)


def operating_point(scores: np.ndarray, labels: np.ndarray, sensitivity: float) -> float:
    """The highest threshold ``t`` at which ``score >= t`` answers "lesion" on at least ``sensitivity`` of the
    lesion images, lowered halfway to the next lesion score below it, so that a scan scoring just under the last
    one kept is still found."""
    scores, labels = _labels(scores, labels)
    lesion = np.sort(scores[labels])[::-1]
    if lesion.size == 0:
        raise ValueError("choosing an operating point needs lesion images")
    keep = int(np.ceil(sensitivity * lesion.size - 1e-9))  # lesion scores that must reach the threshold
    t = lesion[keep - 1]
    below = lesion[keep] if keep < lesion.size else 0.0
    return float((t + below) / 2.0)


# ---------------------------------------------------------------------------------------------------- measuring


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates of ``score >= t`` at every distinct score ``t``, from the highest down,
    after the point (0, 0) of threshold ``inf``: one point per distinct threshold. A rate without images of its
    class is NaN."""
    scores, labels = _labels(scores, labels)
    thresholds = np.unique(scores)[::-1]
    order = np.sort(scores[labels]), np.sort(scores[~labels])
    tpr, fpr = ((lesion.size - np.searchsorted(lesion, thresholds, side="left")) / lesion.size
                if lesion.size else np.full(thresholds.size, np.nan) for lesion in order)
    start = np.array([0.0 if labels.any() else np.nan]), np.array([0.0 if (~labels).any() else np.nan])
    return (np.concatenate([start[1], fpr]), np.concatenate([start[0], tpr]),
            np.concatenate([[np.inf], thresholds]))


def auc_ci(scores: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95% CI of :func:`roc_auc`: each resample draws the lesion images and the normal images
    separately, with replacement, so that every resample keeps the split's two class sizes and has an AUC.
    [NaN, NaN] without both classes or without resamples."""
    scores, labels = _labels(scores, labels)
    lesion, normal = scores[labels], scores[~labels]
    if lesion.size == 0 or normal.size == 0 or n_boot < 1:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, lesion.size, size=(n_boot, lesion.size))
    neg = rng.integers(0, normal.size, size=(n_boot, normal.size))
    truth = np.r_[np.ones(lesion.size, bool), np.zeros(normal.size, bool)]
    aucs = [roc_auc(np.r_[lesion[p], normal[n]], truth) for p, n in zip(pos, neg)]
    low, high = np.percentile(aucs, [2.5, 97.5])
    return [float(low), float(high)]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """The share-weighted mean, over ``bins`` equal-width probability bins, of the gap between the share of lesion
    images and the mean probability in the bin; NaN without images."""
    probs, labels = _labels(probs, labels)
    if probs.size == 0:
        return float("nan")
    which = np.clip((probs * bins).astype(int), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, labels.astype(np.float64), bins) - np.bincount(which, probs, bins))
    return float(gap.sum() / count.sum())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared difference of the probability and the label (1 lesion, 0 normal); NaN without images."""
    probs, labels = _labels(probs, labels)
    return float(np.mean((probs - labels) ** 2)) if probs.size else float("nan")


def _share(hits: np.ndarray) -> tuple[float, list[float]]:
    k, n = int(hits.sum()), int(hits.size)
    return (k / n if n else float("nan")), wilson_ci(k, n)


def sensitivity_specificity(present: np.ndarray, labels: np.ndarray) -> dict:
    """The share of lesion images answered "lesion" and of normal images answered "no lesion", each with its
    Wilson 95% CI (NaN without images of its class)."""
    present, labels = _labels(present, labels)
    present = present.astype(bool)
    sensitivity, sensitivity_ci = _share(present[labels])
    specificity, specificity_ci = _share(~present[~labels])
    return {"sensitivity": sensitivity, "sensitivity_ci95": sensitivity_ci,
            "specificity": specificity, "specificity_ci95": specificity_ci}


def image_level(scores: np.ndarray, labels: np.ndarray, threshold: float, n_boot: int = 1000, seed: int = 0,
                present: np.ndarray | None = None) -> dict:
    """How well image-level ``scores`` (probabilities) answer "is there a lesion" on images with ``labels``: ROC
    AUC with its stratified bootstrap CI, sensitivity and specificity of the answers at ``threshold`` with Wilson
    CIs, expected calibration error over :data:`ECE_BINS` bins and Brier score, and the image counts.

    ``present`` gives the answers when a model decides more than ``score >= threshold`` (the runtime also says
    "no lesion" for a frame out of distribution); by default the answer is ``score >= threshold``.
    """
    scores, labels = _labels(scores, labels)
    present = scores >= threshold if present is None else np.asarray(present, bool).ravel()
    return {"auc": roc_auc(scores, labels), "auc_ci95": auc_ci(scores, labels, n_boot, seed),
            "threshold": float(threshold), **sensitivity_specificity(present, labels),
            "ece": expected_calibration_error(scores, labels), "brier": brier_score(scores, labels),
            "n_lesion": int(labels.sum()), "n_normal": int((~labels).sum())}
