"""runtime/preprocess.py: masks stay binary under resizing, normalisation numbers, enhancement."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ultraseg.runtime import filters
from ultraseg.runtime import preprocess as pp
from tests.conftest import shipped

PLAIN = shipped("preprocess", filter="none", clahe={"enabled": False})


def checkerboard(blocks: int, block: int) -> np.ndarray:
    """``blocks`` x ``blocks`` squares of ``block`` pixels, alternating 0 and 1."""
    cells = (np.add.outer(np.arange(blocks), np.arange(blocks)) % 2).astype(np.uint8)
    return np.kron(cells, np.ones((block, block), np.uint8))


# ---------------------------------------------------------------------------------------------------- resize_mask


def test_resize_mask_downsampled_checkerboard_keeps_structure():
    mask = checkerboard(16, 2)  # 32 x 32 of 2x2 blocks
    out = pp.resize_mask(mask, 16)
    np.testing.assert_array_equal(out, checkerboard(16, 1))


def test_resize_mask_upsampled_checkerboard_is_blocky():
    out = pp.resize_mask(checkerboard(8, 1).astype(bool), 32)
    np.testing.assert_array_equal(out, checkerboard(8, 4))


def test_resize_mask_adds_no_values():
    rng = np.random.default_rng(0)
    mask = rng.random((47, 61)) < 0.3
    for size in (16, 32, 128, (20, 70)):
        out = pp.resize_mask(mask, size)
        assert out.dtype == np.uint8
        assert set(np.unique(out).tolist()) == {0, 1}
    assert pp.resize_mask(mask, (20, 70)).shape == (20, 70)  # (height, width)
    assert pp.resize_mask(mask, 32).shape == (32, 32)


def test_resize_mask_keeps_a_lesion_where_it_was():
    mask = np.zeros((100, 200), bool)
    mask[20:60, 50:150] = True
    out = pp.resize_mask(mask, (50, 100))
    expected = np.zeros((50, 100), np.uint8)
    expected[10:30, 25:75] = 1
    np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------------------------------------------- normalize


def test_normalize_unit():
    x = pp.normalize(np.array([[0, 51], [102, 255]], np.uint8), "unit")
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[0.0, 0.2], [0.4, 1.0]], atol=1e-7)


def test_normalize_zscore_per_image():
    batch = np.array([[[0, 255], [0, 255]], [[10, 20], [30, 40]]], np.uint8)
    x = pp.normalize(batch, "zscore")
    assert x.dtype == np.float32 and x.shape == (2, 2, 2)
    np.testing.assert_allclose(x[0], [[-1, 1], [-1, 1]], atol=1e-6)
    s = np.sqrt(5.0)  # (10, 20, 30, 40): mean 25, std sqrt(125) -> (-15, -5, 5, 15) / sqrt(125)
    np.testing.assert_allclose(x[1], [[-3 / s, -1 / s], [1 / s, 3 / s]], atol=1e-6)
    np.testing.assert_allclose(x.mean(axis=(1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(x.std(axis=(1, 2)), 1, atol=1e-6)


def test_normalize_zscore_constant_image_is_zero():
    x = pp.normalize(np.full((4, 4), 77, np.uint8), "zscore")
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x, np.zeros((4, 4), np.float32))


def test_normalize_unknown_mode():
    with pytest.raises(ValueError, match="unknown normalisation 'minmax'; valid: unit, zscore"):
        pp.normalize(np.zeros((2, 2), np.uint8), "minmax")


# ---------------------------------------------------------------------------------------------------- enhance


def speckle(shape=(48, 64), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, shape[1])[None, :] * np.ones(shape)
    return np.clip(base * rng.gamma(4.0, 0.25, size=shape), 0, 255).astype(np.uint8)


def test_enhance_without_filter_or_clahe_is_identity():
    image = speckle()
    out = pp.enhance(image, PLAIN)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)


def test_enhance_applies_the_chosen_filter():
    image = speckle()
    params = dataclasses.replace(PLAIN, filter="lee")
    expected = np.clip(np.rint(filters.apply_filter(image, "lee", window=7)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(pp.enhance(image, params), expected)
    np.testing.assert_array_equal(pp.enhance(image, PLAIN, filter_name="lee"), expected)  # override
    assert not np.array_equal(expected, image)


def test_enhance_clahe_changes_contrast():
    image = (speckle() // 4 + 100).astype(np.uint8)  # a low-contrast image
    out = pp.enhance(image, dataclasses.replace(PLAIN, clahe=shipped("preprocess.clahe", clip=2.0, tiles=4)))
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert out.std() > 1.3 * image.std()


@pytest.mark.parametrize("shape", [(40, 52), (300, 200), (20, 400)])
def test_preprocess_shape_and_dtype(shape):
    out = pp.preprocess(speckle(shape), shipped("preprocess", size=32))
    assert out.shape == (32, 32)
    assert out.dtype == np.uint8


def test_shrink_keeps_a_scan_at_training_resolution_as_it_is():
    scan = speckle((215, 256))  # the mirror's scans: 256 px on the long side, twice a 128 px network
    assert pp.shrink(scan, 128) is scan
    assert pp.shrink(speckle((60, 90)), 128).shape == (60, 90)  # small frames are never enlarged here


def test_shrink_averages_whole_blocks_of_a_large_frame():
    frame = speckle((480, 640))
    out = pp.shrink(frame, 128)
    assert out.shape == (240, 320) and out.dtype == np.uint8
    blocks = frame.reshape(240, 2, 320, 2).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(out - blocks).max() <= 0.5 + 1e-9
    assert pp.shrink(speckle((100, 700)), 64).shape == (20, 140)  # factor 5 keeps the long side >= 128


@pytest.mark.parametrize("factor", [2, 3])
def test_a_whole_factor_enlargement_of_a_scan_gives_the_network_the_scans_input(factor):
    scan = speckle((64, 80), seed=3)
    params = shipped("preprocess", size=32, filter="lee", clahe={"enabled": True, "clip": 2.0, "tiles": 4})
    enlarged = np.repeat(np.repeat(scan, factor, axis=0), factor, axis=1)
    np.testing.assert_array_equal(pp.preprocess(enlarged, params), pp.preprocess(scan, params))


def test_preprocess_of_a_constant_image_stays_constant():
    out = pp.preprocess(np.full((50, 70), 90, np.uint8), dataclasses.replace(PLAIN, size=16))
    np.testing.assert_array_equal(out, np.full((16, 16), 90, np.uint8))
