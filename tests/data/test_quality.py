"""Tests for ultraseg.data.quality: ENL, Sattar's edge-preservation index, patch choice, the per-image summary."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from ultraseg.data.quality import TISSUE_FLOOR, edge_preservation, enl, filter_quality, speckle_patches
from ultraseg.runtime import filters


def phantom(shape: tuple[int, int] = (128, 112), seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean, noisy, lesion mask): a dark elliptical lesion in grey tissue with 4-look gamma speckle and a black
    frame along the left edge, as in a BUSI scan."""
    h, w = shape
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 5, h // 6), 15, 0, 360, 1, -1)
    clean = np.where(mask > 0, 40.0, 120.0)
    clean[:, :10] = 0.0
    rng = np.random.default_rng(seed)
    noisy = np.clip(clean * rng.gamma(4.0, 0.25, shape), 0, 255).astype(np.float32)
    return clean.astype(np.float32), noisy, mask


def test_enl_of_hand_computed_patches() -> None:
    img = np.zeros((4, 4))
    img[:2, :2] = [[1, 3], [3, 1]]  # mean 2, population variance 1: ENL 4
    img[2:, 2:] = [[2, 4], [4, 2]]  # mean 3, variance 1: ENL 9
    patches = [(slice(0, 2), slice(0, 2)), (slice(2, 4), slice(2, 4))]
    assert enl(img, patches[:1]) == pytest.approx(4.0)
    assert enl(img, patches) == pytest.approx(6.5)


def test_enl_edge_cases() -> None:
    img = np.full((4, 4), 50.0)
    assert enl(img, [(slice(0, 2), slice(0, 2))]) == math.inf
    assert math.isnan(enl(img, []))


def test_enl_of_gamma_speckle_is_its_number_of_looks() -> None:
    rng = np.random.default_rng(1)
    img = 100.0 * rng.gamma(4.0, 0.25, (256, 256))
    patches = [(slice(r, r + 64), slice(c, c + 64)) for r in range(0, 256, 64) for c in range(0, 256, 64)]
    assert enl(img, patches) == pytest.approx(4.0, rel=0.1)


def test_edge_preservation_is_one_for_identical_images() -> None:
    _, noisy, mask = phantom()
    assert edge_preservation(noisy, noisy, mask) == pytest.approx(1.0, abs=1e-12)
    assert edge_preservation(noisy, noisy.copy(), np.zeros_like(mask)) == pytest.approx(1.0, abs=1e-12)


def test_edge_preservation_drops_with_blur() -> None:
    _, noisy, mask = phantom()
    betas = [edge_preservation(noisy, cv2.GaussianBlur(noisy, (0, 0), s), mask) for s in (0.5, 1.0, 2.0)]
    assert 1.0 > betas[0] > betas[1] > betas[2]
    assert betas[0] > 0.9 and betas[1] < 0.6 and betas[2] < 0.2


def test_edge_preservation_is_invariant_to_gain_and_offset() -> None:
    # A correlation: rescaling the filtered image changes nothing.
    _, noisy, mask = phantom()
    blurred = cv2.GaussianBlur(noisy, (0, 0), 1.0)
    assert edge_preservation(noisy, 0.5 * blurred + 20, mask) == pytest.approx(
        edge_preservation(noisy, blurred, mask), abs=1e-9
    )


def test_edge_preservation_looks_only_near_the_boundary() -> None:
    _, noisy, mask = phantom()
    changed = noisy.copy()
    changed[:12, 60:] = 0.0  # tissue far (> 3 px) from the lesion boundary
    assert edge_preservation(noisy, changed, mask) == pytest.approx(1.0, abs=1e-12)
    # Without a mask the whole image counts, so the same change shows.
    assert edge_preservation(noisy, changed, np.zeros_like(mask)) < 0.99
    # Noise added on a strip straddling the top of the lesion weighs more inside the band than in the image.
    near = noisy.copy()
    top = int(np.nonzero(mask)[0].min())
    near[top - 3 : top + 4] += np.random.default_rng(0).normal(0, 30, (7, near.shape[1])).astype(np.float32)
    in_band = edge_preservation(noisy, near, mask)
    assert in_band < 0.97
    assert in_band < edge_preservation(noisy, near, np.zeros_like(mask)) - 0.02


@pytest.mark.parametrize("side", ["inside", "outside"])
def test_edge_preservation_band_covers_both_sides(side: str) -> None:
    _, noisy, mask = phantom()
    ring = np.ones((3, 3), np.uint8)
    if side == "inside":  # 1 to 2 px inside the boundary
        strip = (mask > 0) & (cv2.erode(mask, ring, iterations=2) == 0)
    else:  # 1 to 2 px outside it
        strip = (cv2.dilate(mask, ring, iterations=2) > 0) & (mask == 0)
    changed = noisy.copy()
    changed[strip] = np.random.default_rng(3).uniform(0, 255, int(strip.sum()))
    assert edge_preservation(noisy, changed, mask) < 0.8


def test_edge_preservation_matches_a_direct_correlation() -> None:
    # Empty mask: the whole image. np.corrcoef of the 3x3 Laplacians is Sattar's beta.
    _, noisy, mask = phantom()
    blurred = cv2.medianBlur(noisy, 5)
    lap = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    la = cv2.filter2D(noisy.astype(np.float64), -1, lap, borderType=cv2.BORDER_REFLECT)
    lb = cv2.filter2D(blurred.astype(np.float64), -1, lap, borderType=cv2.BORDER_REFLECT)
    want = np.corrcoef(la.ravel(), lb.ravel())[0, 1]
    assert edge_preservation(noisy, blurred, np.zeros_like(mask)) == pytest.approx(want, abs=1e-9)


def test_edge_preservation_nan_without_variance_or_boundary() -> None:
    flat = np.full((32, 32), 80.0)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 1
    assert math.isnan(edge_preservation(flat, flat, mask))
    _, noisy, _ = phantom((32, 32))
    assert math.isnan(edge_preservation(noisy, noisy, np.ones((32, 32), np.uint8)))  # no boundary inside
    with pytest.raises(ValueError, match="^band"):
        edge_preservation(noisy, noisy, mask, band=0)


def test_speckle_patches_avoid_lesion_and_frame() -> None:
    _, noisy, mask = phantom()
    patches = speckle_patches(noisy, mask, patch=16, count=8)
    assert len(patches) == 8
    taken = np.zeros(mask.shape, int)
    for rs, cs in patches:
        assert (rs.stop - rs.start, cs.stop - cs.start) == (16, 16)
        assert not mask[rs, cs].any()
        assert noisy[rs, cs].mean() > TISSUE_FLOOR
        taken[rs, cs] += 1
    assert taken.max() == 1  # no overlap


def test_speckle_patches_choose_the_most_homogeneous_tiles() -> None:
    rng = np.random.default_rng(2)
    img = 100.0 * rng.gamma(4.0, 0.25, (64, 80))
    # Top-left corner, mean and CV of low-CV tiles; ranked by CV, not by variance or var / mean.
    smooth = [(16, 32, 200.0, 0.05), (32, 16, 30.0, 0.1), (48, 0, 100.0, 0.02), (0, 64, 100.0, 0.02)]
    for r, c, mean, cv in smooth:
        img[r : r + 16, c : c + 16] = mean * rng.gamma(1 / cv**2, cv**2, (16, 16))
    img[48:64, 0:16] *= 0.1  # the third is dark, below the tissue floor
    mask = np.zeros(img.shape, bool)
    mask[0:10, 64:70] = True  # and the fourth touches the lesion
    patches = speckle_patches(img, mask, patch=16, count=3)
    assert [(rs.start, cs.start) for rs, cs in patches[:2]] == [(16, 32), (32, 16)]
    assert {(rs.start, cs.start) for rs, cs in patches[2:]}.isdisjoint({(48, 0), (0, 64)})
    cvs = [img[rs, cs].std() / img[rs, cs].mean() for rs, cs in patches]
    assert cvs == sorted(cvs)


def test_speckle_patches_edge_cases() -> None:
    img = np.full((40, 40), 100.0)
    assert len(speckle_patches(img, np.zeros((40, 40)), patch=16, count=8)) == 4  # only 4 tiles fit
    assert speckle_patches(img, np.zeros((40, 40)), patch=64) == []
    assert speckle_patches(img, np.ones((40, 40)), patch=16) == []
    with pytest.raises(ValueError, match="^mask"):
        speckle_patches(img, np.zeros((40, 41)))
    with pytest.raises(ValueError, match="^count"):
        speckle_patches(img, np.zeros((40, 40)), count=0)


def test_filter_quality_on_the_phantom() -> None:
    _, noisy, mask = phantom()
    same = filter_quality(noisy, filters.apply_filter(noisy, "none"), mask)
    assert same == pytest.approx({"enl_ratio": 1.0, "edge_preservation": 1.0})
    lee = filter_quality(noisy, filters.lee(noisy), mask)
    assert set(lee) == {"enl_ratio", "edge_preservation"}
    assert lee["enl_ratio"] > 3.0
    assert 0.0 < lee["edge_preservation"] < 1.0
    # Heavier smoothing: more looks, worse edges.
    light = filter_quality(noisy, filters.gaussian(noisy, sigma=0.7), mask)
    heavy = filter_quality(noisy, filters.gaussian(noisy, sigma=3.0), mask)
    assert heavy["enl_ratio"] > light["enl_ratio"] > 1.0
    assert heavy["edge_preservation"] < light["edge_preservation"] < 1.0


def test_filter_quality_nan_without_patches() -> None:
    img = np.full((12, 12), 90.0)
    q = filter_quality(img, img, np.zeros((12, 12)))
    assert math.isnan(q["enl_ratio"])
