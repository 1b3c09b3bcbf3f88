"""The image-level measures against hand-computed values, and their undefined cases (one class only: NaN)."""

from __future__ import annotations

import numpy as np
import pytest

from ultraseg import presence

# four images: normal 0.1 and 0.4, lesion 0.35 and 0.8; of the four lesion-normal pairs three are ordered right
SCORES = np.array([0.1, 0.4, 0.35, 0.8])
LABELS = np.array([False, False, True, True])


def test_auc_of_a_known_case_and_ties_counting_half():
    assert presence.roc_auc(SCORES, LABELS) == pytest.approx(0.75)
    assert presence.roc_auc([0.5, 0.5, 0.5], [True, False, False]) == pytest.approx(0.5)
    assert np.isnan(presence.roc_auc([0.2, 0.9], [True, True]))


def test_roc_curve_has_one_point_per_distinct_threshold():
    fpr, tpr, thresholds = presence.roc_curve(SCORES, LABELS)
    assert thresholds.tolist() == [np.inf, 0.8, 0.4, 0.35, 0.1]
    assert tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1]
    # the trapezoids under the curve give the rank AUC
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(presence.roc_auc(SCORES, LABELS))
    fpr, tpr, thresholds = presence.roc_curve([0.3, 0.3, 0.9], [True, False, True])
    assert thresholds.tolist() == [np.inf, 0.9, 0.3] and tpr.tolist() == [0, 0.5, 1] and fpr.tolist() == [0, 0, 1]
    fpr, tpr, _ = presence.roc_curve([0.2, 0.9], [True, True])
    assert tpr.tolist() == [0, 0.5, 1] and np.isnan(fpr).all()


def test_auc_ci_resamples_each_class_and_is_seeded():
    assert presence.auc_ci([0.1, 0.2, 0.8, 0.9], [False, False, True, True], 200) == [1.0, 1.0]
    # one normal image: every resample still holds it, so the interval exists
    low, high = presence.auc_ci([0.5, 0.2, 0.6, 0.9], [False, True, True, True], 500, seed=3)
    assert 0 <= low <= presence.roc_auc([0.5, 0.2, 0.6, 0.9], [False, True, True, True]) <= high <= 1
    assert low < high
    rng = np.random.default_rng(0)
    scores, labels = rng.random(40), rng.random(40) < 0.5
    assert presence.auc_ci(scores, labels, 300, seed=1) == presence.auc_ci(scores, labels, 300, seed=1)
    assert presence.auc_ci(scores, labels, 300, seed=1) != presence.auc_ci(scores, labels, 300, seed=2)
    assert all(np.isnan(presence.auc_ci([0.2, 0.9], [True, True], 100)))
    assert all(np.isnan(presence.auc_ci(SCORES, LABELS, 0)))


def test_calibration_error_and_brier_score_of_a_known_case():
    # bin [0.1, 0.2): 0.12 (lesion) and 0.18 (normal), half lesion against a mean of 0.15; bin [0.9, 1]: 0.9, lesion
    probs, labels = [0.12, 0.18, 0.9], [True, False, True]
    assert presence.expected_calibration_error(probs, labels) == pytest.approx((2 * 0.35 + 0.1) / 3)
    assert presence.brier_score(probs, labels) == pytest.approx((0.88 ** 2 + 0.18 ** 2 + 0.1 ** 2) / 3)
    assert presence.expected_calibration_error([1.0, 0.0], [True, False]) == 0.0  # 1.0 falls in the top bin
    assert np.isnan(presence.expected_calibration_error([], []))


def test_sensitivity_and_specificity_carry_wilson_intervals():
    labels = np.r_[np.ones(10, bool), np.zeros(5, bool)]
    present = np.r_[np.ones(8, bool), np.zeros(2, bool), np.zeros(5, bool)]
    rates = presence.sensitivity_specificity(present, labels)
    assert rates["sensitivity"] == 0.8 and rates["specificity"] == 1.0
    assert rates["sensitivity_ci95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)  # Wilson 8/10
    assert rates["specificity_ci95"][0] == pytest.approx(0.5655, abs=1e-4) and rates["specificity_ci95"][1] == 1.0


def test_image_level_answers_at_the_threshold_or_as_given():
    summary = presence.image_level(SCORES, LABELS, 0.4, n_boot=100)
    assert summary["auc"] == pytest.approx(0.75) and summary["threshold"] == 0.4
    assert (summary["sensitivity"], summary["specificity"]) == (0.5, 0.5)  # 0.8 and 0.4 reach 0.4
    assert (summary["n_lesion"], summary["n_normal"]) == (2, 2)
    assert summary["auc_ci95"][0] <= 0.75 <= summary["auc_ci95"][1]
    assert summary["ece"] == pytest.approx(presence.expected_calibration_error(SCORES, LABELS))
    # the runtime's own answers, e.g. a lesion-scoring frame answered "no" as out of distribution
    given = presence.image_level(SCORES, LABELS, 0.4, n_boot=100, present=[False, False, False, True])
    assert (given["sensitivity"], given["specificity"]) == (0.5, 1.0) and given["auc"] == summary["auc"]


def test_image_level_without_normal_images_is_nan_where_undefined():
    summary = presence.image_level([0.3, 0.9, 0.7], [True, True, True], 0.5, n_boot=50)
    assert np.isnan(summary["auc"]) and all(np.isnan(summary["auc_ci95"]))
    assert np.isnan(summary["specificity"]) and all(np.isnan(summary["specificity_ci95"]))
    assert summary["sensitivity"] == pytest.approx(2 / 3) and summary["n_normal"] == 0
    with pytest.raises(ValueError, match="finite"):
        presence.image_level([np.nan, 0.2], [True, False], 0.5)
