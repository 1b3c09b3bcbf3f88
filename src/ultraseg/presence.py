"""The image-level answer, "is there a lesion at all": calibration of the presence logit and the operating point.

A network with a presence head (:class:`ultraseg.models.blocks.PresenceHead`) gives one logit per image. The deploy
stage turns it into a probability by temperature scaling (Guo et al., 2017, arXiv:1706.04599: one scalar ``T``,
``p = sigmoid(logit / T)``, fitted by likelihood on val), and chooses the operating point on val so that at least a
target share of lesion scans is answered "lesion". Both are stored in the deployable file; the runtime applies them.
NumPy and SciPy only.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit

from ultraseg.metrics import roc_auc

__all__ = ["calibrate", "fit_temperature", "operating_point", "roc_auc"]

TEMPERATURE_RANGE = (0.05, 20.0)
"""Temperatures searched: far wider than a network trained with cross-entropy needs."""


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
