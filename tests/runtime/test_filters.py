"""Tests for ultraseg.runtime.filters: slow per-pixel references, identity, output contract, speckle reduction,
parameters and the registry."""

from __future__ import annotations

import inspect
import math
import statistics

import numpy as np
import pytest
import scipy.ndimage as ndi

from ultraseg.runtime import filters as F
from ultraseg.runtime.filters import FILTERS, apply_filter
from tests.conftest import shipped

SPECKLE = ("lee", "frost", "kuan", "srad")
SMOOTHERS = ("gaussian", "median", "bilateral", "nlm")
NAMES = ("none", *SMOOTHERS, *SPECKLE)


def small_scan(shape: tuple[int, int] = (24, 20), seed: int = 0) -> np.ndarray:
    """A tiny speckled scan: grey tissue, a bright block (edges), a black frame holding one lone bright pixel."""
    rng = np.random.default_rng(seed)
    clean = np.full(shape, 60.0)
    clean[8:16, 6:14] = 150.0
    clean[:, :3] = 0.0
    img = np.clip(clean * rng.gamma(4.0, 0.25, shape), 0, 255)
    img[5, 1] = 200.0  # all four neighbours black: SRAD's q is infinite here
    return img.astype(np.float32)


def phantom(shape: tuple[int, int] = (96, 80), looks: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy): a bright disc on grey tissue, times unit-mean gamma speckle of ``looks`` looks."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    clean = np.full(shape, 80.0)
    clean[(yy - 0.6 * h) ** 2 + (xx - w / 2) ** 2 < (0.25 * min(h, w)) ** 2] = 160.0
    rng = np.random.default_rng(seed)
    noisy = np.clip(clean * rng.gamma(looks, 1.0 / looks, shape), 0, 255)
    return clean.astype(np.float32), noisy.astype(np.float32)


FLAT = (slice(4, 28), slice(4, 28))
"""Homogeneous background of :func:`phantom`, clear of the disc (rows 38 to 77)."""


def flat_enl(img: np.ndarray) -> float:
    region = img[FLAT].astype(np.float64)
    return float(region.mean() ** 2 / region.var())


# ---------------------------------------------------------------------------------------------------- references
# Explicit per-pixel loops. np.pad(mode="symmetric") repeats the edge pixel (cba|abc), as cv2.BORDER_REFLECT does,
# so borders are compared too.


def ref_windows(img: np.ndarray, window: int):
    """Yield (i, j, list of the window's values) for every pixel."""
    r = window // 2
    p = np.pad(img.astype(np.float64), r, mode="symmetric")
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            yield i, j, [float(p[i + a, j + b]) for a in range(window) for b in range(window)]


def ref_stats(img: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    mean = np.zeros(img.shape)
    var = np.zeros(img.shape)
    for i, j, vals in ref_windows(img, window):
        m = sum(vals) / len(vals)
        mean[i, j] = m
        var[i, j] = sum((v - m) ** 2 for v in vals) / len(vals)
    return mean, var


def ref_cv2(mean: float, var: float) -> float:
    return var / mean**2 if mean > 1e-6 else 0.0


def ref_speckle_cv2(img: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(local mean, local CV^2, Cu^2 = median local CV^2 over pixels whose local mean exceeds DARK_FLOOR)."""
    mean, var = ref_stats(img, window)
    ci2 = np.zeros(img.shape)
    bright = []
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            ci2[i, j] = ref_cv2(mean[i, j], var[i, j])
            if mean[i, j] > F.DARK_FLOOR:
                bright.append(ci2[i, j])
    return mean, ci2, statistics.median(bright)


def ref_lee_kuan(img: np.ndarray, window: int, kuan: bool) -> np.ndarray:
    mean, ci2, cu2 = ref_speckle_cv2(img, window)
    out = np.zeros(img.shape)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            k = 1.0 - cu2 / ci2[i, j] if ci2[i, j] > cu2 else 0.0
            if kuan:
                k /= 1.0 + cu2
            out[i, j] = mean[i, j] + k * (float(img[i, j]) - mean[i, j])
    return np.clip(out, 0, 255)


def ref_frost(img: np.ndarray, window: int, damping: float) -> np.ndarray:
    mean, var = ref_stats(img, window)
    r = window // 2
    out = np.zeros(img.shape)
    for i, j, vals in ref_windows(img, window):
        decay = damping * ref_cv2(mean[i, j], var[i, j])
        num = den = 0.0
        for a in range(window):
            for b in range(window):
                w = math.exp(-decay * math.hypot(a - r, b - r))
                num += w * vals[a * window + b]
                den += w
        out[i, j] = num / den
    return np.clip(out, 0, 255)


def ref_srad(img: np.ndarray, iterations: int, step: float) -> np.ndarray:
    """Yu & Acton's scheme as written in the paper, one pixel at a time."""
    x = img.astype(np.float64)
    h, w = x.shape

    def at(i: int, j: int) -> float:  # clamped index: the one-pixel reflection
        return x[min(max(i, 0), h - 1), min(max(j, 0), w - 1)]

    for _ in range(iterations):
        diffs = {}
        q2 = np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                d = [at(i - 1, j) - x[i, j], at(i + 1, j) - x[i, j], at(i, j - 1) - x[i, j], at(i, j + 1) - x[i, j]]
                diffs[i, j] = d
                s = max(x[i, j], 1.0)  # black pixels measured against one grey level
                grad2 = sum(v * v for v in d) / s**2
                lap = sum(d) / s
                den = (1 + lap / 4) ** 2
                q2[i, j] = min(max((grad2 / 2 - lap**2 / 16) / den, 0.0), 1e6) if den > 0 else 1e6
        q02 = statistics.median(
            q2[i, j] for i in range(0, h, 2) for j in range(0, w, 2) if x[i, j] > F.DARK_FLOOR
        )
        c = np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                c[i, j] = min(max(1 / (1 + (q2[i, j] - q02) / (q02 * (1 + q02))), 0.0), 1.0)
        new = x.copy()
        for i in range(h):
            for j in range(w):
                dn, ds, dw, de = diffs[i, j]
                cs, ce = c[min(i + 1, h - 1), j], c[i, min(j + 1, w - 1)]
                new[i, j] = x[i, j] + step / 4 * (c[i, j] * dn + cs * ds + c[i, j] * dw + ce * de)
        x = new
    return np.clip(x, 0, 255)


@pytest.mark.parametrize("window", [3, 7])
@pytest.mark.parametrize("kuan", [False, True])
def test_lee_kuan_match_reference(window: int, kuan: bool) -> None:
    img = small_scan()
    got = (F.kuan if kuan else F.lee)(img, window=window)
    assert np.abs(got - ref_lee_kuan(img, window, kuan)).max() < 1e-3


@pytest.mark.parametrize(("window", "damping"), [(3, 2.0), (7, 2.0), (5, 0.5)])
def test_frost_matches_reference(window: int, damping: float) -> None:
    img = small_scan()
    assert np.abs(F.frost(img, window=window, damping=damping) - ref_frost(img, window, damping)).max() < 1e-3


@pytest.mark.parametrize(("iterations", "step"), [(1, 0.05), (20, 0.05), (8, 1.0)])
def test_srad_matches_reference(iterations: int, step: float) -> None:
    img = small_scan()
    got = F.srad(img, iterations=iterations, step=step)
    want = ref_srad(img, iterations, step)
    assert np.abs(got - want).max() < 1e-3
    assert np.abs(got - img).max() > 1.0  # the comparison is not vacuous


@pytest.mark.parametrize("window", [3, 5, 7, 9])
@pytest.mark.parametrize("whole", [False, True])
def test_median_matches_reference(window: int, whole: bool) -> None:
    # 3 and 5 go through cv2.medianBlur on float32; larger windows through the uint8 medianBlur for whole grey
    # levels, through scipy otherwise.
    img = small_scan(seed=1)
    if whole:
        img = np.rint(img)
    want = np.zeros(img.shape)
    for i, j, vals in ref_windows(img, window):
        want[i, j] = statistics.median(vals)
    assert np.abs(F.median(img, window=window) - want).max() < 1e-4


def test_gaussian_matches_scipy_reflect() -> None:
    img = small_scan(seed=2)
    want = ndi.gaussian_filter(img.astype(np.float64), 1.5, mode="reflect", truncate=4.0)
    assert np.abs(F.gaussian(img, sigma=1.5) - want).max() < 1e-3


# ---------------------------------------------------------------------------------------------------- output contract


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [0.0, 37.0, 255.0])
def test_constant_image_is_unchanged(name: str, value: float) -> None:
    img = np.full((23, 17), value, np.float32)
    assert np.abs(FILTERS[name](img) - value).max() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_non_integer_constant_is_unchanged(name: str) -> None:
    img = np.full((19, 26), 100.25, np.float32)
    # nlm works on the image rounded to uint8.
    tol = 0.5 if name == "nlm" else 1e-4
    assert np.abs(FILTERS[name](img) - 100.25).max() <= tol


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(23, 17), (31, 45), (5, 7)])
def test_dtype_shape_range(name: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    img = rng.uniform(-20, 280, shape).astype(np.float32)  # out-of-range values are clipped first
    for given in (img, np.clip(img, 0, 255).astype(np.uint8), img.astype(np.float64)):
        out = FILTERS[name](given)
        assert out.dtype == np.float32
        assert out.shape == shape
        assert np.isfinite(out).all()
        assert out.min() >= 0.0 and out.max() <= 255.0
    assert not np.shares_memory(FILTERS[name](img), img)


@pytest.mark.parametrize("name", NAMES)
def test_extreme_images_stay_finite(name: str) -> None:
    checker = (np.indices((20, 24)).sum(axis=0) % 2 * 255).astype(np.float32)
    lone = np.zeros((20, 24), np.float32)
    lone[10, 12] = 255.0
    for img in (checker, lone):
        out = FILTERS[name](img)
        assert np.isfinite(out).all()
        assert out.min() >= 0.0 and out.max() <= 255.0


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3)), np.zeros(5), np.array([[1.0, np.nan]]), np.zeros((0, 3))])
def test_bad_images_raise(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="^img"):
        F.lee(bad)


# ---------------------------------------------------------------------------------------------------- speckle reduction

STRONG = {"bilateral": {"sigma_color": 100.0}, "nlm": {"h": 40.0}}
"""Both compare grey-level differences with a fixed scale (h = 10, sigma_color = 25 by default) that is below this
phantom's noise: 4-look speckle at grey level 80 has a std of 40 levels. Scaled to it here; defaults barely act."""


@pytest.mark.parametrize("name", [*SPECKLE, *SMOOTHERS])
def test_filters_reduce_speckle(name: str) -> None:
    clean, noisy = phantom()
    out = apply_filter(noisy, name, **STRONG.get(name, {}))
    assert flat_enl(noisy) == pytest.approx(4.0, rel=0.25)
    assert flat_enl(out) > 2.0 * flat_enl(noisy)
    mse_in = float(np.mean((noisy - clean) ** 2))
    mse_out = float(np.mean((out - clean) ** 2))
    assert mse_out < 0.75 * mse_in


@pytest.mark.parametrize("name", SPECKLE)
def test_adaptive_filters_keep_a_step_edge(name: str) -> None:
    # Next to a strong edge the speckle filters stop averaging across it; a 7x7 box mean smears it.
    rng = np.random.default_rng(5)
    clean = np.full((64, 64), 40.0)
    clean[:, 32:] = 200.0
    noisy = np.clip(clean * rng.gamma(16.0, 1 / 16, clean.shape), 0, 255).astype(np.float32)
    near = (slice(None), slice(29, 35))
    box = ndi.uniform_filter(noisy.astype(np.float64), 7, mode="reflect")
    mse_box = float(np.mean((box - clean)[near] ** 2))
    assert float(np.mean((FILTERS[name](noisy) - clean)[near] ** 2)) < 0.6 * mse_box


def test_srad_conserves_mean_intensity() -> None:
    _, noisy = phantom()
    out = F.srad(noisy, iterations=50, step=0.5)
    assert abs(float(out.mean()) - float(noisy.mean())) < 1e-2


# ---------------------------------------------------------------------------------------------------- parameters

MONOTONE = [
    ("gaussian", "sigma", [0.5, 1.0, 2.0]),
    ("median", "window", [3, 5, 7]),
    ("bilateral", "sigma_color", [10.0, 40.0, 100.0]),
    ("nlm", "h", [10.0, 25.0, 50.0]),
    ("lee", "window", [3, 5, 9]),
    ("kuan", "window", [3, 5, 9]),
    ("frost", "window", [3, 5, 9]),
    ("frost", "damping", [8.0, 2.0, 0.5]),
    ("srad", "iterations", [0, 10, 40, 120]),
    ("srad", "step", [0.01, 0.05, 0.25]),
]


@pytest.mark.parametrize(("name", "param", "values"), MONOTONE)
def test_stronger_parameters_smooth_more(name: str, param: str, values: list) -> None:
    _, noisy = phantom()
    enls = [flat_enl(apply_filter(noisy, name, **{param: v})) for v in values]
    assert all(b > 1.1 * a for a, b in zip(enls, enls[1:])), enls


BAD = [
    ("gaussian", "sigma", 0.0),
    ("gaussian", "sigma", -1.0),
    ("gaussian", "sigma", math.nan),
    ("gaussian", "sigma", math.inf),
    ("median", "window", 4),
    ("median", "window", 1),
    ("median", "window", 5.0),
    ("bilateral", "diameter", 0),
    ("bilateral", "sigma_color", 0.0),
    ("bilateral", "sigma_space", -2.0),
    ("nlm", "h", 0.0),
    ("nlm", "template_window", 6),
    ("nlm", "search_window", 1),
    ("lee", "window", 6),
    ("lee", "window", True),
    ("kuan", "window", 2),
    ("frost", "window", 8),
    ("frost", "damping", 0.0),
    ("srad", "iterations", -1),
    ("srad", "iterations", 2.5),
    ("srad", "step", 0.0),
    ("srad", "step", 1.5),
]


@pytest.mark.parametrize(("name", "param", "value"), BAD)
def test_bad_parameter_raises_naming_it(name: str, param: str, value: object) -> None:
    img = small_scan()
    with pytest.raises(ValueError, match=rf"^{param}:"):
        apply_filter(img, name, **{param: value})
    with pytest.raises(ValueError, match=rf"^{param}:"):
        FILTERS[name](img, **{param: value})


def test_unknown_filter_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="'wiener'") as err:
        apply_filter(small_scan(), "wiener")
    for name in NAMES:
        assert name in str(err.value)


def test_unknown_parameter_names_it_and_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'sigma'.*window"):
        apply_filter(small_scan(), "lee", sigma=1.0)
    with pytest.raises(ValueError, match="'window'"):
        apply_filter(small_scan(), "none", window=3)


def test_registry_matches_params_schema() -> None:
    # params.yaml's preprocess.filters.<name> section maps onto the filter's keywords, defaults included.
    assert tuple(FILTERS) == NAMES
    defaults = shipped("preprocess.filters")
    img = small_scan()
    for name in NAMES:
        kwargs = defaults.kwargs(name)
        sig = inspect.signature(FILTERS[name]).parameters
        assert {k: p.default for k, p in list(sig.items())[1:]} == kwargs, name
        assert np.array_equal(apply_filter(img, name, **kwargs), FILTERS[name](img))


def test_none_is_a_copy() -> None:
    img = small_scan()
    out = apply_filter(img, "none")
    assert np.array_equal(out, img) and not np.shares_memory(out, img)
