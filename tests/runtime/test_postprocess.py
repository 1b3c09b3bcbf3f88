"""Post-processing rules: threshold, gate, small components, largest component."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ultraseg.runtime.postprocess import PostProcess


def blobs() -> np.ndarray:
    prob = np.zeros((40, 40), np.float32)
    prob[2:12, 2:12] = 0.9     # 100 px
    prob[20:24, 20:24] = 0.6   # 16 px
    prob[30:32, 35:37] = 0.7   # 4 px
    return prob


def test_defaults_only_threshold():
    np.testing.assert_array_equal(PostProcess().apply(blobs()), blobs() > 0.5)
    assert PostProcess(threshold=0.65).apply(blobs()).sum() == 104


def test_min_area_is_a_fraction_of_the_image():
    mask = PostProcess(min_area=10 / 1600).apply(blobs())
    assert mask.sum() == 116 and not mask[30:32, 35:37].any()


def test_keep_largest_keeps_one_component_even_on_ties():
    assert PostProcess(keep_largest=True).apply(blobs()).sum() == 100
    prob = np.zeros((10, 10), np.float32)
    prob[0:2, 0:2] = prob[6:8, 6:8] = 0.9
    assert PostProcess(keep_largest=True).apply(prob).sum() == 4


def reference(rule: PostProcess, prob: np.ndarray) -> np.ndarray:
    """The rule written plainly: components labelled over the whole image."""
    mask = prob > rule.threshold
    if not mask.any() or prob.max() <= rule.gate:
        return np.zeros(prob.shape, bool)
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    areas = np.bincount(labels.ravel(), minlength=count)[1:]
    keep = areas >= rule.min_area * prob.size
    if rule.keep_largest and keep.any():
        keep = np.arange(len(keep)) == int(np.argmax(np.where(keep, areas, -1)))  # the first of the largest
    return np.concatenate([[False], keep])[labels]


@pytest.mark.parametrize("seed", range(6))
def test_rules_match_the_whole_image_labelling_on_frames_with_lesions_anywhere(seed):
    rng = np.random.default_rng(seed)
    prob = cv2.GaussianBlur(rng.random((120, 160)).astype(np.float32), (0, 0), 4)
    prob = (prob - prob.min()) / (prob.max() - prob.min())  # blobs of every size, some touching the border
    for rule in (PostProcess(threshold=0.6, min_area=0.002), PostProcess(threshold=0.55, keep_largest=True),
                 PostProcess(threshold=0.7, min_area=0.001, keep_largest=True), PostProcess(threshold=0.99)):
        np.testing.assert_array_equal(rule.apply(prob), reference(rule, prob))


def test_gate_on_the_highest_probability():
    assert PostProcess(gate=0.95).apply(blobs()).sum() == 0
    assert PostProcess(gate=0.85).apply(blobs()).sum() == 120


def test_round_trip_and_validation():
    rule = PostProcess(threshold=0.4, gate=0.7, min_area=0.01, keep_largest=True)
    assert PostProcess.from_dict(rule.to_dict()) == rule
    with pytest.raises(ValueError, match="postprocess.gate"):
        PostProcess(gate=1.5)
    with pytest.raises(ValueError, match="unknown key 'minarea'"):
        PostProcess.from_dict({"minarea": 0.1})


def test_around_peak_is_the_half_maximum_region_connected_to_the_peak():
    prob = np.zeros((9, 12), np.float32)
    prob[2:5, 2:5] = 0.3
    prob[3, 3] = 0.4  # the peak; its region is the 3x3 block (>= 0.2)
    prob[7, 9:11] = 0.35  # as high, but not connected to the peak
    prob[5, 5] = 0.1  # connected, but below half the peak
    mask = PostProcess.around_peak(prob)
    expected = np.zeros_like(mask)
    expected[2:5, 2:5] = True
    np.testing.assert_array_equal(mask, expected)
    assert not PostProcess.around_peak(np.zeros((4, 4), np.float32)).any()


@pytest.mark.parametrize("seed", range(4))
def test_around_peak_matches_labelling_the_whole_map(seed):
    rng = np.random.default_rng(seed)
    prob = cv2.GaussianBlur(rng.random((90, 130)).astype(np.float32), (0, 0), 3)
    peak = np.unravel_index(int(np.argmax(prob)), prob.shape)
    _, labels = cv2.connectedComponents((prob >= 0.5 * prob[peak]).astype(np.uint8), connectivity=8)
    region = PostProcess.around_peak(prob)
    assert region.dtype == bool and region.shape == prob.shape
    np.testing.assert_array_equal(region, labels == labels[peak])
