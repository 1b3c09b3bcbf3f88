"""Tests for ultraseg.data.augment: reproducibility, image/mask agreement, each part on its own, validation."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from ultraseg.data.augment import (
    Augment,
    Shadow,
    affine_matrix,
    elastic_field,
    shadow,
    warp_pair,
    worker_seed,
)
from ultraseg.params import AugmentParams
from tests.conftest import shipped

SCANNER_OFF = {"aspect": 0.0, "speckle_grain": 1.0, "sector_p": 0.0, "annotations_p": 0.0}
"""The scanner-like parts at their neutral settings (each identity or never drawn)."""
OFF = shipped("train.augment", hflip=0.0, affine_p=0.0, intensity_p=0.0, speckle_p=0.0, shadow_p=0.0, elastic_p=0.0,
              **SCANNER_OFF)
"""Every part switched off by its probability; tests switch on what they check."""
ALL_ON = shipped("train.augment", hflip=1.0, affine_p=1.0, intensity_p=1.0, speckle_p=1.0, shadow_p=1.0, elastic_p=1.0,
                 **SCANNER_OFF)
"""Every part but the scanner-like ones always drawn."""
SEEDS = range(8)


def only(**changes: float) -> Augment:
    return Augment(dataclasses.replace(OFF, **changes))


def lesion_pair(shape: tuple[int, int] = (96, 112), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A z-scored-looking scan: black background at the minimum, noisy tissue, a darker elliptical lesion."""
    h, w = shape
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (w // 2 + 3, h // 2 - 2), (w // 4, h // 5), 20, 0, 360, 1, -1)
    image = (0.8 + 0.3 * rng.standard_normal(shape) - 0.9 * mask).astype(np.float32)
    image[:, :4] = -1.5  # the black margin of the scan sector
    return image, mask


def mask_as_image(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- seeding


def test_same_seed_reproduces_and_other_seeds_differ() -> None:
    image, mask = lesion_pair()
    aug = Augment(ALL_ON)
    first = aug(image, mask, np.random.default_rng(7))
    again = aug(image, mask, np.random.default_rng(7))
    other = aug(image, mask, np.random.default_rng(8))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert np.abs(first[0] - other[0]).mean() > 0.05
    assert np.count_nonzero(first[1] != other[1]) > 50


def test_worker_seed_does_not_depend_on_call_order() -> None:
    forward = {i: worker_seed(3, 1, i).random(4) for i in range(6)}
    backward = {i: worker_seed(3, 1, i).random(4) for i in reversed(range(6))}
    for i in range(6):
        np.testing.assert_array_equal(forward[i], backward[i])
    assert len({tuple(v) for v in forward.values()}) == 6
    # Epoch and base seed are part of the key, not only the index.
    assert not np.array_equal(worker_seed(3, 2, 0).random(4), forward[0])
    assert not np.array_equal(worker_seed(4, 1, 0).random(4), forward[0])


def test_switching_a_part_off_leaves_the_other_draws_unchanged() -> None:
    image, mask = lesion_pair()
    without_image_parts = dataclasses.replace(ALL_ON, intensity_p=0.0, speckle_p=0.0, shadow_p=0.0)
    for seed in SEEDS:
        _, full = Augment(ALL_ON)(image, mask, np.random.default_rng(seed))
        _, reduced = Augment(without_image_parts)(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(full, reduced)


def test_scanner_parts_switched_off_leave_the_older_parts_bit_identical() -> None:
    # The scanner-like parts were added after the others: switched off, every sample is what it was without them.
    image, mask = lesion_pair()
    scanner = dataclasses.replace(ALL_ON, aspect=0.3, speckle_grain=2.5, sector_p=1.0, annotations_p=1.0)
    off = dataclasses.replace(scanner, **SCANNER_OFF)
    changed = 0
    for seed in SEEDS:
        plain = Augment(ALL_ON)(image, mask, np.random.default_rng(seed))
        for got, want in zip(Augment(off)(image, mask, np.random.default_rng(seed)), plain):
            np.testing.assert_array_equal(got, want)
        changed += not np.array_equal(Augment(scanner)(image, mask, np.random.default_rng(seed))[0], plain[0])
    assert changed == len(SEEDS)


def test_stretch_changes_the_width_only() -> None:
    square = np.zeros((64, 64), np.uint8)
    square[24:40, 24:40] = 1
    aug = only(affine_p=1.0, rotate=0.0, translate=0.0, scale=0.0, aspect=0.5)
    widths = set()
    for seed in SEEDS:
        _, out = aug(mask_as_image(square), square, np.random.default_rng(seed))
        rows, cols = np.nonzero(out)
        assert (rows.min(), rows.max()) == (24, 39)
        assert abs((cols.min() + cols.max()) / 2 - 31.5) <= 1  # about the centre
        widths.add(int(cols.max() - cols.min() + 1))
    assert min(widths) < 14 and max(widths) > 18


def test_sector_blacks_out_both_sides_and_cuts_the_mask() -> None:
    image, mask = lesion_pair((96, 112))
    mask[:] = 1
    aug = only(sector_p=1.0)
    for seed in SEEDS:
        image_out, mask_out = aug(image, mask, np.random.default_rng(seed))
        outside = mask_out == 0
        assert outside[0, 0] and outside[0, -1] and not outside[:, 55:57].any()  # fan about the top centre
        assert (image_out[outside] == image.min()).all()
        np.testing.assert_array_equal(image_out[~outside], image[~outside])


def test_annotations_are_drawn_at_the_image_maximum_on_normals_too() -> None:
    image, _ = lesion_pair()
    normal = np.zeros(image.shape, np.uint8)
    image_out, mask_out = only(annotations_p=1.0)(image, normal, np.random.default_rng(3))
    drawn = image_out != image
    assert 10 < drawn.sum() < 0.2 * image.size
    assert (image_out[drawn] == image.max()).all() and not mask_out.any()


# ---------------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    "changes",
    [
        {"affine_p": 1.0},
        {"elastic_p": 1.0},
        {"hflip": 1.0, "affine_p": 1.0, "elastic_p": 1.0, "rotate": 25.0, "elastic_alpha": 12.0},
        {"affine_p": 1.0, "rotate": 0.0, "translate": 0.0, "scale": 0.0, "aspect": 0.4},
    ],
    ids=["affine", "elastic", "flip+affine+elastic", "stretch"],
)
def test_image_and_mask_get_the_same_geometry(changes: dict[str, float]) -> None:
    _, mask = lesion_pair()
    aug = only(**changes)
    moved = []
    for seed in SEEDS:
        image_out, mask_out = aug(mask_as_image(mask), mask, np.random.default_rng(seed))
        agreement = np.mean((image_out > 0.5) == (mask_out == 1))
        assert agreement >= 0.99, f"seed {seed}: bilinear image and nearest mask agree on {agreement:.4f}"
        moved.append(np.count_nonzero(mask_out != mask))
    assert min(moved) > 20, "the transform must actually move the lesion for the check to mean anything"


def test_hflip_alone_flips_both_exactly() -> None:
    image, mask = lesion_pair()
    image_out, mask_out = only(hflip=1.0)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(image_out, image[:, ::-1])
    np.testing.assert_array_equal(mask_out, mask[:, ::-1])


def test_affine_stays_in_range_and_fills_with_the_image_minimum() -> None:
    image, mask = lesion_pair()
    aug = only(affine_p=1.0, scale=0.3, translate=0.2)
    for seed in SEEDS:
        image_out, _ = aug(image, mask, np.random.default_rng(seed))
        # Bilinear weights are convex and the border is the minimum: no value leaves the input range.
        assert image.min() - 1e-6 <= image_out.min() and image_out.max() <= image.max() + 1e-6
    shift = only(affine_p=1.0, rotate=0.0, scale=0.0, translate=0.2)
    outs = [shift(image, mask, np.random.default_rng(s))[0] for s in SEEDS]
    # A vertical shift uncovers a top or bottom strip, which no input row resembles: it must be the background
    # level (-1.5), not 0.
    uncovered = [np.all(out[row] == image.min()) for out in outs for row in (0, -1)]
    assert not any(np.all(image[row] == image.min()) for row in (0, -1))
    assert sum(uncovered) >= len(SEEDS) // 2


def test_elastic_with_a_zero_field_equals_the_plain_affine() -> None:
    image, mask = lesion_pair()
    matrix = affine_matrix(image.shape, angle=12.0, scale=1.1, shift=(4.0, -3.0))
    zero = np.zeros((*image.shape, 2), np.float32)
    plain = warp_pair(image, mask, matrix, None)
    remapped = warp_pair(image, mask, matrix, zero)
    assert np.abs(plain[0] - remapped[0]).max() < 0.05
    assert np.mean(plain[1] == remapped[1]) > 0.998
    assert np.count_nonzero(plain[1] != mask) > 100  # the matrix is not the identity


def test_elastic_field_is_smooth_and_alpha_is_its_peak() -> None:
    field = elastic_field((128, 96), alpha=8.0, sigma=6.0, rng=np.random.default_rng(0))
    assert field.shape == (128, 96, 2) and field.dtype == np.float32
    assert np.abs(field).max() == pytest.approx(8.0, rel=1e-5)
    dx = field[..., 0]
    # Gaussian-blurred white noise has autocorrelation exp(-lag^2 / (4 sigma^2)): 0.78 at a lag of one sigma.
    lag6 = np.corrcoef(dx[:, :-6].ravel(), dx[:, 6:].ravel())[0, 1]
    assert 0.65 < lag6 < 0.9


# ---------------------------------------------------------------------------------------------------- every part


PARTS = {
    "hflip": {"hflip": 1.0},
    "affine": {"affine_p": 1.0},
    "elastic": {"elastic_p": 1.0},
    "intensity": {"intensity_p": 1.0},
    "speckle": {"speckle_p": 1.0},
    "shadow": {"shadow_p": 1.0},
    "stretch": {"affine_p": 1.0, "aspect": 0.4},
    "coarse speckle": {"speckle_p": 1.0, "speckle": 0.4, "speckle_grain": 3.0},
    "sector": {"sector_p": 1.0},
    "annotations": {"annotations_p": 1.0},
    "all": dataclasses.asdict(ALL_ON),
}


@pytest.mark.parametrize("part", PARTS)
def test_every_part_keeps_shape_dtype_and_a_binary_mask(part: str) -> None:
    image, mask = lesion_pair((37, 53))
    image_before, mask_before = image.copy(), mask.copy()
    aug = only(**PARTS[part])
    for seed in SEEDS:
        image_out, mask_out = aug(image, mask, np.random.default_rng(seed))
        assert image_out.shape == mask_out.shape == (37, 53)
        assert image_out.dtype == np.float32 and mask_out.dtype == np.uint8
        assert set(np.unique(mask_out)) <= {0, 1}
        assert np.isfinite(image_out).all()
        assert not np.shares_memory(image_out, image) and not np.shares_memory(mask_out, mask)
    np.testing.assert_array_equal(image, image_before)
    np.testing.assert_array_equal(mask, mask_before)


@pytest.mark.parametrize("part", ["intensity", "speckle", "shadow", "coarse speckle", "annotations"])
def test_image_only_parts_leave_the_mask_alone(part: str) -> None:
    image, mask = lesion_pair()
    aug = only(**PARTS[part])
    for seed in SEEDS:
        image_out, mask_out = aug(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(mask_out, mask)
        assert np.abs(image_out - image).max() > 1e-3, f"{part} did nothing for seed {seed}"


@pytest.mark.parametrize(
    "changes",
    [
        {"hflip": 0.0, "affine_p": 1.0, "rotate": 0.0, "translate": 0.0, "scale": 0.0},
        {"elastic_p": 1.0, "elastic_alpha": 0.0},
        {"intensity_p": 1.0, "brightness": 0.0, "contrast": 0.0, "gamma": 0.0},
        {"speckle_p": 1.0, "speckle": 0.0},
        {"shadow_p": 1.0, "shadow_strength": 0.0},
    ],
    ids=["affine", "elastic", "intensity", "speckle", "shadow"],
)
def test_zero_magnitude_is_the_identity(changes: dict[str, float]) -> None:
    image, mask = lesion_pair()
    image_out, mask_out = only(**changes)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(image_out, image)
    np.testing.assert_array_equal(mask_out, mask)


def test_disabled_returns_exact_copies() -> None:
    image, mask = lesion_pair()
    aug = Augment(dataclasses.replace(ALL_ON, enabled=False))
    image_out, mask_out = aug(image.astype(np.float64), mask, np.random.default_rng(0))
    np.testing.assert_array_equal(image_out, image)
    np.testing.assert_array_equal(mask_out, mask)
    assert image_out.dtype == np.float32 and not np.shares_memory(mask_out, mask)


def test_mismatched_shapes_are_rejected() -> None:
    image, mask = lesion_pair()
    with pytest.raises(ValueError, match="shape"):
        Augment(shipped("train.augment"))(image, mask[:, :-1], np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        Augment(shipped("train.augment"))(image, mask, np.random.default_rng(0), soft=image[:-1])


# ---------------------------------------------------------------------------------------------------- soft maps


@pytest.mark.parametrize("seed", SEEDS)
def test_soft_map_gets_the_geometry_and_nothing_else(seed: int) -> None:
    image, mask = lesion_pair(seed=seed)
    soft = np.where(mask > 0, 4.0, -6.0).astype(np.float32) + image  # logit-like, with detail to warp
    geometry = dataclasses.replace(ALL_ON, intensity_p=0.0, speckle_p=0.0, shadow_p=0.0)
    image_out, mask_out, soft_out = Augment(ALL_ON)(image, mask, np.random.default_rng(seed), soft=soft)
    plain_image, plain_mask = Augment(ALL_ON)(image, mask, np.random.default_rng(seed))
    warped_soft, warped_mask = Augment(geometry)(soft, mask, np.random.default_rng(seed))
    # the soft map changes nothing else, and is warped exactly as an image without the echo and gain changes
    np.testing.assert_array_equal(image_out, plain_image)
    np.testing.assert_array_equal(mask_out, plain_mask)
    np.testing.assert_array_equal(soft_out, warped_soft)
    assert soft_out.dtype == np.float32 and soft_out.shape == soft.shape
    assert not np.array_equal(soft_out, soft) and soft_out.min() == soft.min()  # filled with its minimum


def test_soft_map_is_copied_when_augmentation_is_off() -> None:
    image, mask = lesion_pair()
    soft = image * 3
    _, _, soft_out = Augment(dataclasses.replace(ALL_ON, enabled=False))(image, mask, np.random.default_rng(0), soft)
    np.testing.assert_array_equal(soft_out, soft)
    assert not np.shares_memory(soft_out, soft)


# ---------------------------------------------------------------------------------------------------- intensity


def test_brightness_and_contrast_are_increasing_affine_maps_within_range() -> None:
    image, mask = lesion_pair()
    aug = only(intensity_p=1.0, gamma=0.0, contrast=0.2, brightness=0.15)
    order = np.argsort(image, axis=None)
    slopes = []
    for seed in SEEDS:
        out, _ = aug(image, mask, np.random.default_rng(seed))
        assert np.all(np.diff(out.ravel()[order]) >= 0), "pixel ordering changed"
        slope, intercept = np.polyfit(image.ravel(), out.ravel(), 1)
        np.testing.assert_allclose(out, slope * image + intercept, atol=1e-4)
        assert 0.8 - 1e-6 <= slope <= 1.2 + 1e-6
        # Contrast pivots on the mean, so the mean moves only by the brightness shift: at most 0.15 std.
        assert abs(out.mean() - image.mean()) <= 0.15 * image.std() + 1e-4
        slopes.append(slope)
    assert np.ptp(slopes) > 0.05


def test_gamma_keeps_order_and_range() -> None:
    image, mask = lesion_pair()
    aug = only(intensity_p=1.0, brightness=0.0, contrast=0.0, gamma=0.25)
    order = np.argsort(image, axis=None)
    changed = 0.0
    for seed in SEEDS:
        out, _ = aug(image, mask, np.random.default_rng(seed))
        assert np.all(np.diff(out.ravel()[order]) >= -1e-6)
        assert out.min() == pytest.approx(image.min(), abs=1e-5)
        assert out.max() == pytest.approx(image.max(), abs=1e-5)
        changed = max(changed, float(np.abs(out - image).max()))
    assert changed > 0.1


# ---------------------------------------------------------------------------------------------------- speckle, shadow


def flat_region_image(shape: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Background at -1 on the left quarter, a flat tissue plateau at 1.5 elsewhere."""
    image = np.full(shape, 1.5, np.float32)
    image[:, : shape[1] // 4] = -1.0
    return image, np.zeros(shape, np.uint8)


@pytest.mark.parametrize("strength", [0.1, 0.3])
def test_speckle_sets_the_local_coefficient_of_variation(strength: float) -> None:
    image, mask = flat_region_image()
    plateau = image > 0
    aug = only(speckle_p=1.0, speckle=strength)
    for seed in range(4):
        out, _ = aug(image, mask, np.random.default_rng(seed))
        height = out[plateau] - image.min()  # what the noise multiplies: the plateau's height above the minimum
        assert height.std() / height.mean() == pytest.approx(strength, rel=0.15)
        assert height.mean() == pytest.approx(2.5, rel=0.03)  # unit-mean noise: no brightness drift
        np.testing.assert_array_equal(out[~plateau], image[~plateau])  # the black background stays black
        # Speckle grains span more than a pixel: neighbours are correlated.
        noise = out[:, 40:] / 2.5
        assert np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1] > 0.3


def test_shadow_darkens_below_its_start_and_fans_out() -> None:
    image, mask = flat_region_image((128, 128))
    image[:, :32] = 1.5
    image[0, 0] = -1.0  # one pixel holds the minimum, so the whole plateau has height 2.5 above it
    h = image.shape[0]
    aug = only(shadow_p=1.0, shadow_strength=0.6)
    for seed in SEEDS:
        out, _ = aug(image, mask, np.random.default_rng(seed))
        kept = (out - image.min()) / (image - image.min() + 1e-12)
        kept[0, 0] = 1.0
        assert np.all(kept <= 1 + 1e-6), "a shadow only darkens"
        changed_rows = np.flatnonzero((kept < 1 - 1e-6).any(axis=1))
        first = changed_rows[0]
        assert 0.2 * h <= first <= 0.7 * h + 1
        np.testing.assert_array_equal(changed_rows, np.arange(first, h))  # it reaches the bottom of the image
        np.testing.assert_array_equal(out[:first], image[:first])
        widths = (kept < 1 - 1e-6).sum(axis=1)[first:]
        assert np.all(np.diff(widths) >= 0), "the shadow must widen (or stay) with depth"
        assert widths[-1] < image.shape[1], "a shadow is a band, not the whole row"
        removed = 1 - kept.min()
        assert 0.6 * 0.4 <= removed <= 0.6 + 1e-6  # drawn strength is in [0.5, 1] x 0.6


def test_shadow_function_leaves_rows_above_top_bit_identical() -> None:
    image, _ = lesion_pair()
    s = Shadow(x=50.0, top=40.3, half_width=6.0, spread=0.2, strength=0.7)
    out = shadow(image, s)
    np.testing.assert_array_equal(out[:41], image[:41])
    below = slice(60, None)
    assert (out[below, 50] < image[below, 50]).all()
    np.testing.assert_array_equal(out[:, 100:], image[:, 100:])  # far outside the fan at every depth


# ---------------------------------------------------------------------------------------------------- validation


FLOAT_FIELDS = [f.name for f in dataclasses.fields(AugmentParams) if f.type in (float, "float")]


def test_defaults_are_valid_and_every_float_field_is_checked() -> None:
    shipped("train.augment").validate("train.augment")
    assert len(FLOAT_FIELDS) == 20  # all but `enabled` and the integer `annotations`


@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_validate_rejects_negative_and_nan(name: str) -> None:
    for bad in (-0.5, math.nan):
        with pytest.raises(ValueError, match=rf"^train\.augment\.{name}: "):
            dataclasses.replace(shipped("train.augment"), **{name: bad}).validate("train.augment")


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("hflip", 1.5),
        ("affine_p", 1.01),
        ("elastic_p", 2.0),
        ("rotate", 200.0),
        ("scale", 1.0),
        ("contrast", 1.0),
        ("gamma", 1.0),
        ("shadow_strength", 1.2),
        ("elastic_sigma", 0.0),
        ("speckle", math.inf),
        ("aspect", 1.0),
        ("speckle_grain", 0.5),
        ("sector_p", 1.5),
        ("annotations", 0),
    ],
)
def test_validate_rejects_out_of_range(name: str, bad: float) -> None:
    with pytest.raises(ValueError, match=rf"^aug\.{name}: expected a "):
        dataclasses.replace(shipped("train.augment"), **{name: bad}).validate("aug")


def test_augment_validates_its_params() -> None:
    with pytest.raises(ValueError, match="hflip"):
        Augment(shipped("train.augment", hflip=2.0))
