"""Scanner shifts: deterministic, of the stated strength, geometry applied to the mask too."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import speckle_image
from ultraseg import shifts


@pytest.fixture(scope="module")
def scan():
    image = speckle_image(np.random.default_rng(0), 120, 160)
    mask = np.zeros(image.shape, bool)
    mask[40:70, 60:100] = True
    return image, mask


@pytest.mark.parametrize("shift", shifts.SHIFTS, ids=lambda s: s.name)
@pytest.mark.parametrize("severity", shifts.SEVERITIES)
def test_every_shift_is_repeatable_and_keeps_size_and_types(scan, shift, severity):
    image, mask = scan
    out, ref = shifts.apply(shift, severity, image, mask, seed=3, index=7)
    again, ref_again = shifts.apply(shift, severity, image, mask, seed=3, index=7)
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(ref, ref_again)
    assert out.shape == image.shape and out.dtype == np.uint8 and ref.dtype == bool
    assert not np.array_equal(out, image)  # every shift changes the scan


def test_stronger_severities_change_more(scan):
    image, mask = scan
    for shift in shifts.SHIFTS:
        changes = [np.abs(shifts.apply(shift, s, image, mask, 0, 0)[0].astype(float) - image).mean()
                   for s in shifts.SEVERITIES]
        assert changes[0] < changes[2], shift.name


def test_geometric_shifts_move_the_mask_with_the_image(scan):
    image, mask = scan
    out, ref = shifts.apply(shifts.by_name("zoom_out"), "moderate", image, mask, 0, 0)
    assert 0.45 * mask.sum() < ref.sum() < 0.55 * mask.sum()  # 0.7 x 0.7 of the area
    narrow, ref = shifts.apply(shifts.by_name("aspect"), "strong", image, mask, 0, 0)
    assert ref.sum() == pytest.approx(0.55 * mask.sum(), rel=0.1)
    assert (narrow[:, :10] == 0).all()  # letterboxed
    inside = shifts.apply(shifts.by_name("sector"), "strong", np.full_like(image, 255), mask, 0, 0)[0] > 0
    ref = shifts.apply(shifts.by_name("sector"), "strong", image, mask, 0, 0)[1]
    np.testing.assert_array_equal(ref, mask & inside)  # what the sector hides is not there to find
    assert inside[0, image.shape[1] // 2] and not inside[-1, 0]


def test_photometric_shifts_leave_the_mask(scan):
    image, mask = scan
    for name in ("gain", "tgc", "compression", "speckle", "blur", "resolution", "jpeg", "annotations"):
        np.testing.assert_array_equal(shifts.apply(shifts.by_name(name), "strong", image, mask, 0, 0)[1], mask)


def test_draws_differ_between_images_and_seeds(scan):
    image, mask = scan
    speckle = shifts.by_name("speckle")
    a = shifts.apply(speckle, "mild", image, mask, 0, 0)[0]
    assert not np.array_equal(a, shifts.apply(speckle, "mild", image, mask, 0, 1)[0])
    assert not np.array_equal(a, shifts.apply(speckle, "mild", image, mask, 1, 0)[0])


def test_unknown_shift_is_named():
    with pytest.raises(KeyError, match="unknown shift 'fog'"):
        shifts.by_name("fog")
