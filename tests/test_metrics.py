"""Per-case metrics, HD95 and aggregates against values computed by hand, and HD95 against a brute-force version."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from ultraseg.metrics import (
    aggregate,
    bootstrap_ci,
    boundary,
    case_metrics,
    choose_threshold,
    evaluate_cases,
    failures,
    hd95,
    paired_bootstrap,
    threshold_curve,
    wilson_ci,
)
from ultraseg.runtime.preprocess import resize_probabilities

NAN_KEYS = ("dice", "iou", "precision", "recall", "hd95")


def box(shape, top, left, height, width):
    mask = np.zeros(shape, bool)
    mask[top:top + height, left:left + width] = True
    return mask


def disc(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def brute_hd95(pred, ref):
    """O(n²) reference: boundary = mask pixels with a 4-neighbour outside (outside the image counts as outside),
    all pairwise distances, max of the two directed 95th percentiles."""
    def edge_points(mask):
        padded = np.pad(mask, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return np.argwhere(mask & ~inner).astype(float)

    p, r = edge_points(pred), edge_points(ref)
    dist = np.sqrt(((p[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(dist.min(axis=1), 95), np.percentile(dist.min(axis=0), 95))


# ---------------------------------------------------------------------------------------------------- case_metrics


def test_overlapping_rectangles_by_hand():
    pred = box((12, 12), 0, 0, 4, 4)   # 16 px
    ref = box((12, 12), 2, 2, 4, 6)    # 24 px, overlap rows 2-3 x cols 2-3 = 4 px
    m = case_metrics(pred, ref)
    assert (m["tp"], m["fp"], m["fn"], m["pred_pixels"], m["ref_pixels"]) == (4, 12, 20, 16, 24)
    assert m["dice"] == pytest.approx(8 / 40)
    assert m["iou"] == pytest.approx(4 / 36)
    assert m["precision"] == pytest.approx(4 / 16)
    assert m["recall"] == pytest.approx(4 / 24)
    assert m["hd95"] == pytest.approx(brute_hd95(pred, ref))


def test_perfect_prediction():
    mask = disc((40, 40), (20, 20), 9)
    m = case_metrics(mask, mask.astype(np.uint8) * 255)  # 0/255 integer masks read as boolean
    assert (m["dice"], m["iou"], m["precision"], m["recall"], m["hd95"]) == (1.0, 1.0, 1.0, 1.0, 0.0)


def test_both_empty_is_nan_everywhere():
    empty = np.zeros((8, 8), bool)
    m = case_metrics(empty, empty)
    assert all(math.isnan(m[k]) for k in NAN_KEYS)
    assert m["pred_pixels"] == m["ref_pixels"] == 0


def test_empty_reference_nonempty_prediction():
    m = case_metrics(box((8, 8), 1, 1, 2, 2), np.zeros((8, 8), bool))
    assert (m["dice"], m["iou"], m["precision"]) == (0.0, 0.0, 0.0)
    assert math.isnan(m["recall"]) and math.isnan(m["hd95"])


def test_empty_prediction_nonempty_reference():
    m = case_metrics(np.zeros((8, 8), bool), box((8, 8), 1, 1, 2, 2))
    assert (m["dice"], m["iou"], m["recall"]) == (0.0, 0.0, 0.0)
    assert math.isnan(m["precision"]) and math.isnan(m["hd95"])


def test_inputs_are_checked():
    mask = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match="threshold"):
        case_metrics(mask.astype(np.float32), mask)
    with pytest.raises(ValueError, match="shape"):
        case_metrics(mask, np.zeros((8, 9), bool))
    with pytest.raises(ValueError, match="2-D"):
        case_metrics(mask[None], mask[None])


def test_evaluate_cases_rows():
    refs = [box((8, 8), 1, 1, 3, 3), np.zeros((8, 8), bool)]
    rows = evaluate_cases(refs, refs, ["a", "b"], ["benign", "normal"])
    assert [(r["id"], r["class"]) for r in rows] == [("a", "benign"), ("b", "normal")]
    assert rows[0]["dice"] == 1.0 and math.isnan(rows[1]["dice"])
    with pytest.raises(ValueError):
        evaluate_cases(refs, refs, ["a"], ["benign", "normal"])


# ---------------------------------------------------------------------------------------------------- HD95


def test_boundary_is_mask_minus_cross_erosion_with_outside_border():
    full = np.ones((4, 4), bool)
    assert boundary(full).sum() == 12  # the image border is outside: the outer ring
    diamond = disc((7, 7), (3, 3), 2)  # 13 px; the cross erosion keeps the centre and its 4 neighbours
    assert boundary(diamond).sum() == 8  # (an 8-connected 3x3 erosion would keep only the centre: 12)


@pytest.mark.parametrize("axis", [0, 1])
def test_squares_offset_by_k(axis):
    """20x20 squares shifted by k=3: the 20 boundary pixels of the leading side sit exactly k from the other
    square's side and no boundary pixel is farther, so >5% of distances equal the maximum k in both directions."""
    ref = box((50, 50), 10, 10, 20, 20)
    pred = np.roll(ref, 3, axis=axis)
    assert hd95(pred, ref) == 3.0
    assert hd95(pred, ref, spacing=0.5) == 1.5
    assert hd95(pred, ref) == brute_hd95(pred, ref)


def test_concentric_discs():
    inner, outer = disc((64, 64), (32, 32), 10), disc((64, 64), (32, 32), 15)
    assert abs(hd95(inner, outer) - 5.0) <= 1.0
    assert hd95(inner, outer) == pytest.approx(brute_hd95(inner, outer))


def test_hd95_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(0)
    blobs = [ndimage.gaussian_filter(rng.normal(size=(40, 36)), 3) > 0.05 for _ in range(8)]
    assert any(b[0].any() or b[-1].any() or b[:, 0].any() or b[:, -1].any() for b in blobs)  # border pixels too
    for pred, ref in zip(blobs[::2], blobs[1::2]):
        assert hd95(pred, ref) == pytest.approx(brute_hd95(pred, ref), abs=1e-9)
        assert hd95(pred, ref) == pytest.approx(hd95(ref, pred))


def test_hd95_nan_when_either_empty():
    empty, square = np.zeros((10, 10), bool), box((10, 10), 2, 2, 4, 4)
    assert math.isnan(hd95(empty, square)) and math.isnan(hd95(square, empty)) and math.isnan(hd95(empty, empty))


# ---------------------------------------------------------------------------------------------------- aggregate

SHAPE = (20, 20)
EMPTY = np.zeros(SHAPE, bool)
A = box(SHAPE, 0, 0, 10, 10)                                    # perfect: Dice 1, 100 px
B_REF, B_PRED = box(SHAPE, 15, 0, 2, 2), box(SHAPE, 15, 5, 2, 2)  # disjoint 2x2 shifted 5: Dice 0, HD95 5
C_PRED, C_REF = box(SHAPE, 10, 10, 4, 4), box(SHAPE, 12, 12, 4, 6)  # the hand-computed rectangles: Dice 1/5
D_REF = box(SHAPE, 0, 14, 3, 3)                                  # missed lesion: Dice 0, precision/HD95 NaN


def cohort():
    preds = [A, B_PRED, C_PRED, EMPTY, EMPTY, box(SHAPE, 5, 5, 1, 3), EMPTY]
    refs = [A, B_REF, C_REF, D_REF, EMPTY, EMPTY, EMPTY]
    classes = ["benign", "malignant", "benign", "malignant", "normal", "normal", "normal"]
    return evaluate_cases(preds, refs, [f"case{i}" for i in range(7)], classes)


def test_lesion_mean_differs_from_pooled_dice():
    rows = evaluate_cases([A, B_PRED], [A, B_REF], ["a", "b"], ["benign", "malignant"])
    summary = aggregate(rows, n_boot=10)
    assert summary["dice"] == pytest.approx(0.5)                  # (1 + 0) / 2
    assert summary["dice_pooled"] == pytest.approx(25 / 26)       # 2*100 / (2*100 + 4 + 4)


def test_aggregate_by_hand():
    rows = cohort()
    assert rows[1]["hd95"] == 5.0
    s = aggregate(rows, n_boot=200)
    assert (s["n_lesion"], s["n_normal"], s["both_empty"]) == (4, 3, 2)
    assert s["dice"] == pytest.approx((1 + 0 + 1 / 5 + 0) / 4)
    assert s["iou"] == pytest.approx((1 + 0 + 1 / 9 + 0) / 4)
    assert s["precision"] == pytest.approx((1 + 0 + 1 / 4) / 3)   # the missed lesion has no precision
    assert s["recall"] == pytest.approx((1 + 0 + 1 / 6 + 0) / 4)
    assert s["hd95"] == pytest.approx((0 + 5 + rows[2]["hd95"]) / 3) and s["hd95_nan"] == 1
    assert s["dice_pooled"] == pytest.approx(2 * 104 / (2 * 104 + 16 + 33))
    assert s["normal_clean"] == pytest.approx(2 / 3)
    benign, malignant = s["by_class"]["benign"], s["by_class"]["malignant"]
    assert (benign["n"], malignant["n"]) == (2, 2)
    assert benign["dice"] == pytest.approx(0.6) and malignant["dice"] == 0.0
    assert benign["iou"] == pytest.approx((1 + 1 / 9) / 2)
    assert benign["hd95"] == pytest.approx(rows[2]["hd95"] / 2) and malignant["hd95"] == 5.0
    assert all(not math.isnan(v) for v in (s["dice"], s["iou"], s["dice_pooled"]))  # both-empty cases left out


def test_bootstrap_ci():
    lesion_rows = [r for r in cohort() if r["ref_pixels"] > 0]
    small = aggregate(lesion_rows, n_boot=1000, seed=0)
    large = aggregate(lesion_rows * 25, n_boot=1000, seed=0)
    for s in (small, large):
        low, high = s["dice_ci95"]
        assert low <= s["dice"] <= high and low < high
    assert large["dice"] == pytest.approx(small["dice"])
    width = lambda s: s["dice_ci95"][1] - s["dice_ci95"][0]  # noqa: E731
    assert width(large) < width(small) / 3                      # ~1/sqrt(25)
    assert aggregate(lesion_rows, seed=0)["dice_ci95"] == small["dice_ci95"]
    assert aggregate(lesion_rows * 25, seed=0)["dice_ci95"] == large["dice_ci95"]
    assert aggregate(lesion_rows * 25, seed=1)["dice_ci95"] != large["dice_ci95"]


def test_failure_counts_by_hand():
    f = aggregate(cohort(), n_boot=10)["failures"]
    # B overlaps nothing (Dice 0) and D predicts nothing: both missed; A and C overlap their lesion
    assert (f["missed"]["n"], f["missed"]["rate"]) == (2, 0.5)
    assert (f["sensitivity"]["n"], f["sensitivity"]["rate"]) == (2, 0.5)
    assert (f["false_alarms"]["n"], f["normal_clean"]["n"]) == (1, 2)
    assert f["normal_clean"]["rate"] == pytest.approx(2 / 3)
    assert f["missed"]["ci95"] == pytest.approx(wilson_ci(2, 4))


def test_a_weak_overlap_is_a_miss_but_a_hit_for_sensitivity():
    ref, pred = box(SHAPE, 0, 0, 10, 10), box(SHAPE, 9, 9, 5, 5)   # one shared pixel: Dice 2/125
    f = failures(evaluate_cases([pred], [ref], ["a"], ["benign"]))
    assert f["missed"]["n"] == 1 and f["sensitivity"]["n"] == 1
    assert math.isnan(f["normal_clean"]["rate"]) and f["false_alarms"]["n"] == 0


def test_wilson_ci_known_values():
    assert wilson_ci(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)       # not [0, 0] as the normal one gives
    assert wilson_ci(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert wilson_ci(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    assert all(math.isnan(v) for v in wilson_ci(0, 0))


def test_paired_bootstrap_sees_a_small_shift_that_unpaired_cis_hide():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.2, 1.0, 150)                 # image difficulty dominates the spread
    b = a - 0.01 + rng.normal(0, 0.005, a.size)    # a consistent one-point loss
    paired = paired_bootstrap(b, a, n_boot=1000, seed=0)
    assert paired["mean_diff"] == pytest.approx(np.mean(b - a))
    assert paired["ci95"][1] < 0 and paired["distinguishable"]
    low_a, _ = bootstrap_ci(a, 1000, 0)
    _, high_b = bootstrap_ci(b, 1000, 0)
    assert high_b > low_a                          # the two separate CIs overlap widely
    same = paired_bootstrap(a, a + rng.normal(0, 0.01, a.size), n_boot=1000, seed=0)
    assert same["ci95"][0] < 0 < same["ci95"][1] and not same["distinguishable"]
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap(a, a[:-1])


def test_aggregate_without_lesions_is_nan_without_warnings():
    rows = evaluate_cases([EMPTY], [EMPTY], ["n"], ["normal"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = aggregate(rows)
    assert s["n_lesion"] == 0 and math.isnan(s["dice"]) and all(math.isnan(v) for v in s["dice_ci95"])
    assert s["normal_clean"] == 1.0 and s["both_empty"] == 1


# ---------------------------------------------------------------------------------------------------- probabilities


def test_resize_probabilities_is_bilinear_and_keeps_range():
    prob = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    out = resize_probabilities(prob, (100, 75))
    assert out.shape == (100, 75) and out.dtype == np.float32
    assert prob.min() - 1e-6 <= out.min() and out.max() <= prob.max() + 1e-6
    ramp = np.array([[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(resize_probabilities(ramp, (2, 4))[0], [0, 0.25, 0.75, 1], atol=1e-6)


def curve_case():
    """One lesion image: 16 reference px at 0.75, 16 at 0.5, 4 background px at 0.625, the rest 0.125.
    Two normal images: one with 2 px at 0.375, one at 0 everywhere."""
    ref = np.zeros((8, 8), bool)
    ref[:, :4] = True
    lesion = np.full((8, 8), 0.125)
    lesion[:4, :4], lesion[4:, :4], lesion[:4, 6] = 0.75, 0.5, 0.625
    normal = np.zeros((8, 8))
    normal[0, :2] = 0.375
    return [lesion, normal, np.zeros((8, 8))], [ref, np.zeros((8, 8), bool), np.zeros((8, 8), bool)]


def test_threshold_curve_by_hand():
    probs, refs = curve_case()
    curve = threshold_curve(probs, refs, np.array([0.25, 0.5, 0.7]))
    assert [c["threshold"] for c in curve] == [0.25, 0.5, 0.7]
    # t=0.25: TP 32 FP 4 FN 0; t=0.5 (strict >, the 0.5 px drop): TP 16 FP 4 FN 16; t=0.7: TP 16 FP 0 FN 16
    assert [c["dice"] for c in curve] == pytest.approx([64 / 68, 32 / 52, 32 / 48])
    assert [c["normal_clean"] for c in curve] == [0.5, 1.0, 1.0]
    assert choose_threshold(curve) == 0.25


def test_threshold_curve_agrees_with_case_metrics():
    rng = np.random.default_rng(1)
    probs = [ndimage.gaussian_filter(rng.random((16, 16)), 1.5) for _ in range(4)]
    refs = [p > np.quantile(p, q) for p, q in zip(probs, (0.6, 0.8, 0.9))] + [np.zeros((16, 16), bool)]
    probs = [np.clip(p + rng.normal(0, 0.05, p.shape), 0, 1) for p in probs]
    thresholds = np.linspace(0.3, 0.7, 5)
    for point, t in zip(threshold_curve(probs, refs, thresholds), thresholds):
        dice = [case_metrics(p > t, r)["dice"] for p, r in zip(probs[:3], refs[:3])]
        assert point["dice"] == pytest.approx(np.mean(dice))
        assert point["normal_clean"] == float(not (probs[3] > t).any())


def test_choose_threshold_ties():
    tied = [{"threshold": t, "dice": d} for t, d in ((0.3, 0.8), (0.45, 0.8), (0.6, 0.8), (0.5, 0.7))]
    assert choose_threshold(tied) == 0.45
    assert choose_threshold([{"threshold": 0.6, "dice": 0.8}, {"threshold": 0.4, "dice": 0.8}]) == 0.4
    with pytest.raises(ValueError):
        choose_threshold([{"threshold": 0.5, "dice": float("nan")}])
