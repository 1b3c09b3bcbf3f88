"""Segmentation metrics, per image first, aggregates second (after nnU-Net's evaluation).

Conventions, used everywhere a number is reported:

- Every case is scored at the image's ORIGINAL resolution. Network probabilities are resized there with bilinear
  interpolation (:func:`ultraseg.runtime.preprocess.resize_probabilities`) and only then thresholded, as
  ``prob > threshold``.
- A *lesion image* has a non-empty reference (benign, malignant); a *normal image* has an empty one.
- Undefined scores are NaN, never 1.0:

  ==========================  =====  =====  =========  ======  =====
  case                        dice   iou    precision  recall  hd95
  ==========================  =====  =====  =========  ======  =====
  both empty                  NaN    NaN    NaN        NaN     NaN
  reference empty, pred not   0      0      0          NaN     NaN
  prediction empty, ref not   0      0      NaN        0       NaN
  ==========================  =====  =====  =========  ======  =====

  HD95 is undefined when either mask is empty, so the HD95 mean is over *hit* lesion images only and is always
  reported with ``hd95_nan``, the number of lesion images it leaves out: a model that misses more lesions must not
  look better for it. Those cases count as failures (Dice 0) in the Dice mean.
- HD95, in pixels times ``spacing``: boundaries are ``mask XOR binary_erosion(mask)`` with the 4-connected cross
  (scipy's default structure, as medpy with ``connectivity=1`` and MONAI's ``get_mask_edges`` do; the boundary is
  an 8-connected contour, and mask pixels on the image border are boundary pixels). The distance is
  ``max(p95 d(pred boundary -> ref boundary), p95 d(ref boundary -> pred boundary))`` with numpy's linear
  percentile: MONAI's ``compute_hausdorff_distance(percentile=95)``. medpy's ``hd95`` instead takes the 95th
  percentile of both directions pooled, which is never larger; the two agree on symmetric configurations.
- Aggregates (:func:`aggregate`): the headline ``dice`` is the mean over lesion images. Normal images are scored
  only by ``normal_clean``, the fraction with no predicted pixel; cases with NaN Dice (both empty) are counted
  in ``both_empty`` and are in no mean.
- Failure counts, per image: a *missed lesion* is a lesion image whose prediction is empty or has Dice below
  :data:`MISS_DICE`; a *false alarm* is a normal image with any predicted pixel (``1 - normal_clean``). Image-level
  ``sensitivity`` is the share of lesion images whose prediction overlaps the lesion at all; ``normal_clean`` is the
  image-level specificity. Every rate has a Wilson score 95% CI (:func:`wilson_ci`).
- Comparisons of two models on the same images are paired (:func:`paired_bootstrap`): the CI of the mean per-image
  Dice difference, which is far narrower than the two separate CIs suggest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

CROSS = ndimage.generate_binary_structure(2, 1)
LESION_CLASSES = ("benign", "malignant")
MISS_DICE = 0.1
"""A lesion image whose prediction has a Dice below this (or is empty) counts as a missed lesion."""
_Z95 = 1.959963984540054


# ---------------------------------------------------------------------------------------------------- pixel counts


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


def normal_clean(fp: np.ndarray, lesion: np.ndarray) -> float:
    """The fraction of normal images (``lesion`` False) with no predicted pixel (``fp`` 0); NaN if there are none."""
    return _mean((np.asarray(fp)[~np.asarray(lesion, bool)] == 0).astype(np.float64))


def summarize(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Lesion-image mean Dice and IoU, and the fraction of normal images predicted clean (NaN if none)."""
    tp, fp, fn = confusion(pred, target)
    lesion = (tp + fn) > 0
    return {"dice": _mean(dice(tp, fp, fn)[lesion]), "iou": _mean(iou(tp, fp, fn)[lesion]),
            "normal_clean": normal_clean(fp, lesion)}


def _mask(array: np.ndarray, name: str) -> np.ndarray:
    """A 2-D boolean mask from a bool or integer (0/1, 0/255) array; floats are refused as unthresholded."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} has dtype {array.dtype}: threshold probabilities into a boolean mask first")
    return array != 0


# ---------------------------------------------------------------------------------------------------- per case


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask: the mask minus its erosion by the 4-connected cross (border is outside)."""
    return mask & ~ndimage.binary_erosion(mask, structure=CROSS, border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: float = 1.0) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the boundaries of two boolean masks; NaN if one is empty.

    Computed in the bounding box of ``pred | ref``, which holds every boundary pixel and leaves the erosion
    unchanged (a mask pixel on the box's edge has its outer neighbour outside both masks).
    """
    pred, ref = _mask(pred, "prediction"), _mask(ref, "reference")
    if not pred.any() or not ref.any():
        return float("nan")
    union = pred | ref
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    pred_edge, ref_edge = boundary(pred[box]), boundary(ref[box])
    to_ref = ndimage.distance_transform_edt(~ref_edge, sampling=spacing)[pred_edge]
    to_pred = ndimage.distance_transform_edt(~pred_edge, sampling=spacing)[ref_edge]
    return float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))


def case_metrics(pred: np.ndarray, ref: np.ndarray, spacing: float = 1.0) -> dict[str, float]:
    """Scores of one 2-D prediction against its reference at original resolution (NaN conventions: module doc).

    Returns ``dice, iou, precision, recall, hd95`` and the pixel counts ``tp, fp, fn, pred_pixels, ref_pixels``.
    """
    pred, ref = _mask(pred, "prediction"), _mask(ref, "reference")
    tp, fp, fn = confusion(pred[None], ref[None])
    scores = {name: float(score(tp, fp, fn)[0]) for name, score in (
        ("dice", dice), ("iou", iou), ("precision", precision), ("recall", recall))}
    tp, fp, fn = int(tp[0]), int(fp[0]), int(fn[0])
    return {**scores, "hd95": hd95(pred, ref, spacing), "tp": tp, "fp": fp, "fn": fn,
            "pred_pixels": tp + fp, "ref_pixels": tp + fn}


def evaluate_cases(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], ids: Sequence[str],
                   classes: Sequence[str], spacing: float = 1.0) -> list[dict]:
    """One row ``{id, class, **case_metrics}`` per case; all four sequences have one entry per case."""
    if not len(preds) == len(refs) == len(ids) == len(classes):
        raise ValueError(f"{len(preds)} predictions, {len(refs)} references, {len(ids)} ids, {len(classes)} classes")
    return [{"id": i, "class": c, **case_metrics(p, r, spacing)} for p, r, i, c in zip(preds, refs, ids, classes)]


# ---------------------------------------------------------------------------------------------------- aggregates


def _mean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (without a warning) if there are none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95% CI of the mean: ``n_boot`` resamples with replacement, drawn as one index matrix."""
    if values.size == 0:
        return [float("nan"), float("nan")]
    idx = np.random.default_rng(seed).integers(0, values.size, size=(n_boot, values.size))
    low, high = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return [float(low), float(high)]


def wilson_ci(successes: int, n: int) -> list[float]:
    """Wilson score 95% interval of the proportion ``successes / n`` ([NaN, NaN] for n = 0): unlike the normal
    approximation it stays inside [0, 1] and is not of width zero at 0 or n successes, where small test sets often
    are."""
    if n == 0:
        return [float("nan"), float("nan")]
    p, z2 = successes / n, _Z95 * _Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image-level ROC AUC: the chance that a random lesion image scores above a random normal one (ties count
    half), from the ranks (Mann-Whitney U); NaN without both classes."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # tied scores share their mean rank
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _rate(hits: np.ndarray) -> dict:
    """Count, share and Wilson CI of a boolean array."""
    k, n = int(np.sum(hits)), int(np.size(hits))
    return {"n": k, "rate": k / n if n else float("nan"), "ci95": wilson_ci(k, n)}


def failures(rows: Sequence[dict]) -> dict:
    """Image-level failure counts of :func:`evaluate_cases` rows: ``missed`` lesions, ``false_alarms`` on normal
    images, image-level ``sensitivity`` (the prediction overlaps the lesion) and ``normal_clean`` (specificity),
    each as ``{n, rate, ci95}`` over its image set."""
    ref = np.array([row["ref_pixels"] for row in rows])
    pred = np.array([row["pred_pixels"] for row in rows])
    tp = np.array([row["tp"] for row in rows])
    dsc = np.array([row["dice"] for row in rows], dtype=np.float64)
    lesion, normal = ref > 0, ref == 0
    return {"missed": _rate((pred[lesion] == 0) | (dsc[lesion] < MISS_DICE)),
            "sensitivity": _rate(tp[lesion] > 0),
            "false_alarms": _rate(pred[normal] > 0),
            "normal_clean": _rate(pred[normal] == 0)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of the per-image difference ``a - b`` (one entry per image, same order) with its percentile bootstrap
    95% CI, resampling images, so that what the two models share (an image hard for both) cancels out.
    ``distinguishable`` is whether the CI excludes zero."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two equal 1-D arrays, got shapes {a.shape} and {b.shape}")
    diff = a - b
    low, high = bootstrap_ci(diff, n_boot, seed)
    return {"n": int(diff.size), "mean_diff": float(diff.mean()) if diff.size else float("nan"),
            "ci95": [low, high], "distinguishable": bool(low > 0 or high < 0)}


def aggregate(rows: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Headline and secondary aggregates of :func:`evaluate_cases` rows.

    ``dice`` (the headline), ``iou``, ``precision``, ``recall`` and ``hd95`` are means over lesion images, NaNs left
    out (precision: images with an empty prediction; ``hd95_nan`` counts the lesion images without an HD95);
    ``dice_ci95`` is the percentile bootstrap 95% CI of the headline over lesion images; ``dice_pooled`` is the
    micro Dice of the TP/FP/FN pixels summed over lesion images (what some papers report); ``by_class`` has the
    lesion-image means per lesion class (BUSI's two always, then any other class of lesion images);
    ``normal_clean`` is the fraction of normal images with no predicted pixel; ``both_empty`` counts the cases with
    NaN Dice; ``failures`` holds :func:`failures`.
    """
    col = {key: np.array([row[key] for row in rows], dtype=np.float64)
           for key in ("dice", "iou", "precision", "recall", "hd95", "tp", "fp", "fn", "pred_pixels", "ref_pixels")}
    cls = np.array([row["class"] for row in rows], dtype=object)
    lesion, normal = col["ref_pixels"] > 0, col["ref_pixels"] == 0
    tp, fp, fn = (col[key][lesion].sum() for key in ("tp", "fp", "fn"))
    by_class = {}
    for name in dict.fromkeys([*LESION_CLASSES, *sorted(set(cls[lesion].tolist()))]):
        sel = lesion & (cls == name)
        by_class[name] = {"n": int(sel.sum()), **{key: _mean(col[key][sel]) for key in ("dice", "iou", "hd95")}}
    return {
        "n_lesion": int(lesion.sum()),
        "n_normal": int(normal.sum()),
        "dice": _mean(col["dice"][lesion]),
        "dice_ci95": bootstrap_ci(col["dice"][lesion], n_boot, seed),
        **{key: _mean(col[key][lesion]) for key in ("iou", "precision", "recall", "hd95")},
        "hd95_nan": int(np.isnan(col["hd95"][lesion]).sum()),
        "dice_pooled": float(dice(tp, fp, fn)),
        "by_class": by_class,
        "normal_clean": normal_clean(col["pred_pixels"], lesion),
        "both_empty": int(np.isnan(col["dice"]).sum()),
        "failures": failures(rows),
    }


# ---------------------------------------------------------------------------------------------------- probabilities


def threshold_curve(probs: Sequence[np.ndarray], refs: Sequence[np.ndarray], thresholds: np.ndarray) -> list[dict]:
    """Lesion-image mean Dice and ``normal_clean`` of ``prob > t`` for every threshold ``t`` (VAL split only).

    Per image, the probabilities of reference and background pixels are sorted once, so the TP and FP counts at all
    thresholds come from one ``searchsorted`` each. Probabilities must already be at the references' resolution.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    tp, fp, fn = (np.zeros((len(refs), thresholds.size), np.int64) for _ in range(3))
    for i, (prob, ref) in enumerate(zip(probs, refs, strict=True)):
        ref = _mask(ref, "reference")
        if np.shape(prob) != ref.shape:
            raise ValueError(f"case {i}: probabilities {np.shape(prob)} differ from reference {ref.shape}")
        lesion_p, background_p = np.sort(prob[ref]), np.sort(prob[~ref])
        tp[i] = lesion_p.size - np.searchsorted(lesion_p, thresholds, side="right")
        fp[i] = background_p.size - np.searchsorted(background_p, thresholds, side="right")
        fn[i] = lesion_p.size - tp[i]
    lesion = (tp + fn)[:, 0] > 0
    scores = dice(tp, fp, fn)
    return [{"threshold": float(t), "dice": _mean(scores[lesion, j]), "normal_clean": normal_clean(fp[:, j], lesion)}
            for j, t in enumerate(thresholds)]


def choose_threshold(curve: Sequence[dict]) -> float:
    """The threshold of maximal lesion-mean Dice; ties go to the one closest to 0.5, then to the lower one."""
    dice = np.array([point["dice"] for point in curve], dtype=np.float64)
    if dice.size == 0 or np.isnan(dice).all():
        raise ValueError("no threshold has a lesion-mean Dice (no lesion images in the curve)")
    best = [p["threshold"] for p, d in zip(curve, dice) if d >= np.nanmax(dice) - 1e-12]
    return float(min(best, key=lambda t: (abs(t - 0.5), t)))
