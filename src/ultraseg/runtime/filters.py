"""Speckle and denoising filters for greyscale ultrasound images.

Every filter maps a 2-D image with values in [0, 255] (any real dtype; uint8 is converted, values outside the
range are clipped first) to a float32 image of the same shape, clipped to [0, 255]. Borders are reflected with the
edge pixel repeated (``cv2.BORDER_REFLECT``, scipy's ``mode='reflect'``: ``cba|abcd``; :func:`nlm` excepted, see
there). A constant image comes back unchanged and no filter produces NaN or inf.

The adaptive speckle filters model the image as tissue reflectivity times unit-mean speckle, ``z = x * u``, and
need the speckle's coefficient of variation ``Cu`` (std / mean). It is estimated from the image itself: the median,
over pixels whose local mean is above :data:`DARK_FLOOR`, of the local ``Ci**2 = var / mean**2`` in the filter's
window. Most of a scan is homogeneous tissue, where ``Ci`` measures the speckle alone; edges and lesions are a
minority that the median ignores.

:data:`FILTERS` maps every value of ``preprocess.filter`` to its function; :func:`apply_filter` checks the name and
the parameters' names, and each filter raises ``ValueError`` naming a parameter whose value is out of range.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import cv2
import numpy as np

DARK_FLOOR = 10.0
"""Local means at or below this grey level are the black frame around the scan, where the CV is 0/0 or
quantisation noise; they are left out of every speckle estimate."""
_MEAN_EPS = 1e-6
"""Local means below this are treated as zero: the local CV there is set to 0 instead of dividing by zero."""
_SRAD_FLOOR = 1.0
"""SRAD divides by the pixel value; black pixels are divided by one grey level (the 8-bit quantisation step)
instead, so a black pixel next to tissue reads as an edge and the black frame does not bleed into the scan."""
_Q2_MAX = 1e6
"""Cap on SRAD's squared instantaneous coefficient of variation (infinite for a lone bright pixel among black
ones); any value this large already makes the diffusion coefficient vanish."""
_MEDIAN_BLUR_MAX = 5
"""``cv2.medianBlur`` accepts float32 only for windows 3 and 5; larger windows need uint8 (or scipy)."""


# ---------------------------------------------------------------------------------------------------- checks


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_window(name: str, value: Any) -> None:
    if not _is_int(value) or value < 3 or value % 2 == 0:
        raise ValueError(f"{name}: expected an odd integer >= 3, got {value!r}")


def _check_positive(name: str, value: Any, upper: float = math.inf) -> None:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and 0 < value <= upper
    if not ok:
        bound = "" if math.isinf(upper) else f" and <= {upper:g}"
        raise ValueError(f"{name}: expected a finite number > 0{bound}, got {value!r}")


def _as_image(img: Any) -> np.ndarray:
    """``img`` as a float32 array clipped to [0, 255]; raises ``ValueError`` unless it is a finite 2-D image."""
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"img: expected a 2-D greyscale image, got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"img: expected an integer or float image, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"img: empty image of shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError("img: contains NaN or inf")
    return np.clip(arr.astype(np.float32), 0.0, 255.0)


def _finish(out: np.ndarray) -> np.ndarray:
    return np.clip(out, 0.0, 255.0).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------- local statistics


def _local_stats(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) variance of ``x`` (float64) in the ``window``-square around every pixel."""
    size = (window, window)
    mean = cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)
    mean_sq = cv2.boxFilter(x * x, -1, size, borderType=cv2.BORDER_REFLECT)
    # E[x^2] - E[x]^2 can come out a hair below zero by rounding.
    return mean, np.maximum(mean_sq - mean * mean, 0.0)


def _local_cv2(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Local squared coefficient of variation ``var / mean**2``; 0 where the mean is (numerically) zero.

    For non-negative data it is bounded by ``window**2 - 1``, so it never overflows.
    """
    return np.divide(var, mean * mean, out=np.zeros_like(var), where=mean > _MEAN_EPS)


def _speckle_cv2(ci2: np.ndarray, mean: np.ndarray) -> float:
    """``Cu**2``: median of ``ci2`` over pixels brighter than :data:`DARK_FLOOR` (all pixels if none are)."""
    bright = mean > DARK_FLOOR
    return float(np.median(ci2[bright] if bright.any() else ci2))


def _speckle_gain(ci2: np.ndarray, cu2: float) -> np.ndarray:
    """``1 - Cu**2 / Ci**2`` where the local CV exceeds the speckle's, else 0 (pure speckle: take the mean)."""
    return np.divide(ci2 - cu2, ci2, out=np.zeros_like(ci2), where=ci2 > cu2)


# ---------------------------------------------------------------------------------------------------- filters


def _identity(img: Any) -> np.ndarray:
    """No filtering: a float32 copy of ``img``."""
    return _as_image(img)


def gaussian(img: Any, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` pixels (kernel side chosen by OpenCV, about 8 sigma)."""
    _check_positive("sigma", sigma)
    x = _as_image(img)
    return _finish(cv2.GaussianBlur(x, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma),
                                    borderType=cv2.BORDER_REFLECT))


def median(img: Any, window: int = 5) -> np.ndarray:
    """Median over the ``window``-square around every pixel."""
    _check_window("window", window)
    x = _as_image(img)
    if window > _MEDIAN_BLUR_MAX:
        if not np.array_equal(x, np.rint(x)):
            import scipy.ndimage as ndi  # only for fractional grey levels: the runtime stays numpy and OpenCV

            return _finish(ndi.median_filter(x, size=window, mode="reflect"))
        # Whole grey levels (any 8-bit scan): the uint8 medianBlur gives the exact median without scipy.
        x = x.astype(np.uint8)
    # medianBlur always replicates the border; pad by reflection ourselves and crop.
    r = window // 2
    padded = cv2.copyMakeBorder(x, r, r, r, r, cv2.BORDER_REFLECT)
    return _finish(cv2.medianBlur(padded, window)[r:-r, r:-r].astype(np.float32))


def bilateral(img: Any, diameter: int = 7, sigma_color: float = 25.0, sigma_space: float = 5.0) -> np.ndarray:
    """Bilateral filter (Tomasi & Manduchi, ICCV 1998) over a ``diameter``-pixel neighbourhood.

    ``sigma_color`` is in grey levels, ``sigma_space`` in pixels.
    """
    if not _is_int(diameter) or diameter < 1:
        raise ValueError(f"diameter: expected an integer >= 1, got {diameter!r}")
    _check_positive("sigma_color", sigma_color)
    _check_positive("sigma_space", sigma_space)
    x = _as_image(img)
    return _finish(cv2.bilateralFilter(x, int(diameter), float(sigma_color), float(sigma_space),
                                       borderType=cv2.BORDER_REFLECT))


def nlm(img: Any, h: float = 10.0, template_window: int = 7, search_window: int = 21) -> np.ndarray:
    """Non-local means (Buades et al., CVPR 2005) via ``cv2.fastNlMeansDenoising`` on the image rounded to uint8.

    ``h`` is the filter strength in grey levels; patches of ``template_window`` pixels are compared within
    ``search_window``. The uint8 rounding moves values by at most 0.5 grey level. The one exception to reflected
    borders: OpenCV pads internally with ``BORDER_REFLECT_101`` (``dcb|abcd``); padding by reflection ourselves
    would cost a third more time in the slowest filter for a difference confined to the outermost pixels.
    """
    _check_positive("h", h)
    _check_window("template_window", template_window)
    _check_window("search_window", search_window)
    u8 = np.rint(_as_image(img)).astype(np.uint8)
    out = cv2.fastNlMeansDenoising(u8, None, h=float(h), templateWindowSize=int(template_window),
                                   searchWindowSize=int(search_window))
    return _finish(out.astype(np.float32))


def lee(img: Any, window: int = 7) -> np.ndarray:
    """Lee filter (Lee, "Digital image enhancement and noise filtering by use of local statistics", IEEE TPAMI 1980).

    ``x = m + k (z - m)`` with local mean ``m`` and gain ``k = 1 - Cu**2 / Ci**2`` (0 where ``Ci <= Cu``): pure
    speckle is replaced by the local mean, edges (large local CV ``Ci``) are kept. The gain is the form compared by
    Lopes et al. (IEEE TGRS 1990); ``Cu`` is estimated as in the module docstring.
    """
    _check_window("window", window)
    z = _as_image(img).astype(np.float64)
    mean, var = _local_stats(z, window)
    ci2 = _local_cv2(mean, var)
    gain = _speckle_gain(ci2, _speckle_cv2(ci2, mean))
    return _finish(mean + gain * (z - mean))


def kuan(img: Any, window: int = 7) -> np.ndarray:
    """Kuan filter (Kuan et al., "Adaptive noise smoothing filter for images with signal-dependent noise", IEEE
    TPAMI 1985).

    As :func:`lee`, but with the exact multiplicative-model LMMSE gain ``k = (1 - Cu**2 / Ci**2) / (1 + Cu**2)``,
    which keeps a little less of each pixel's deviation from the mean.
    """
    _check_window("window", window)
    z = _as_image(img).astype(np.float64)
    mean, var = _local_stats(z, window)
    ci2 = _local_cv2(mean, var)
    cu2 = _speckle_cv2(ci2, mean)
    gain = _speckle_gain(ci2, cu2) / (1.0 + cu2)
    return _finish(mean + gain * (z - mean))


@functools.cache
def _rings(window: int) -> tuple[tuple[float, np.ndarray], ...]:
    """The offsets of a ``window``-square grouped by Euclidean distance: (distance, 0/1 kernel marking them)."""
    r = window // 2
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    dist2 = dy * dy + dx * dx
    return tuple((math.sqrt(d2), (dist2 == d2).astype(np.float64)) for d2 in np.unique(dist2))


def frost(img: Any, window: int = 7, damping: float = 2.0) -> np.ndarray:
    """Frost filter (Frost et al., "A model for radar images and its application to adaptive digital filtering of
    multiplicative noise", IEEE TPAMI 1982).

    Each pixel becomes a weighted mean over its ``window``-square with weights ``exp(-damping * Ci**2 * |t|)``:
    ``|t|`` is the Euclidean distance of the neighbour and ``Ci`` the local CV, so homogeneous speckle is averaged
    almost uniformly while edges (large ``Ci``) keep mostly the centre pixel. The weights depend only on the
    distance, so neighbours at one distance (a ring) are summed with one convolution and weighted together.
    """
    _check_window("window", window)
    _check_positive("damping", damping)
    z = _as_image(img).astype(np.float64)
    mean, var = _local_stats(z, window)
    decay = float(damping) * _local_cv2(mean, var)
    total = np.zeros_like(z)
    weight = np.zeros_like(z)
    for dist, ring in _rings(window):
        w = np.exp(-decay * dist)
        total += w * cv2.filter2D(z, -1, ring, borderType=cv2.BORDER_REFLECT)
        weight += w * ring.sum()
    # The centre's weight is exp(0) = 1, so the sum of weights is >= 1.
    return _finish(total / weight)


def srad(img: Any, iterations: int = 20, step: float = 0.05) -> np.ndarray:
    """Speckle Reducing Anisotropic Diffusion (Yu & Acton, IEEE TIP 11(11), 2002), ``iterations`` explicit steps.

    Each step computes the instantaneous coefficient of variation ``q`` from the four neighbour differences, the
    diffusion coefficient ``c(q) = 1 / (1 + (q**2 - q0**2) / (q0**2 (1 + q0**2)))`` clipped to [0, 1], and updates
    ``I += step / 4 * div(c grad I)``, the paper's discretisation. With ``c`` in [0, 1] a pixel's own weight in
    the update, ``1 - step * (mean c of its four faces)``, is non-negative for ``step <= 1``: the scheme is stable
    and the image stays in range. Larger steps raise ``ValueError``.

    The speckle scale ``q0**2`` is re-estimated every step as the median of ``q**2`` over pixels brighter than
    :data:`DARK_FLOOR`: homogeneous speckle covers most of the scan, so the median is its ``q``, and ``c`` is then 1
    (full diffusion) for the smoother half of it. Using ``q`` itself, rather than a windowed CV, keeps ``q0`` in the
    units ``c`` compares it with, whatever the speckle's grain size.
    """
    if not _is_int(iterations) or iterations < 0:
        raise ValueError(f"iterations: expected an integer >= 0, got {iterations!r}")
    _check_positive("step", step, upper=1.0)
    # float32 throughout: the diffusion's rounding error stays far below one grey level over many steps.
    x = _as_image(img)
    for _ in range(iterations):
        x = _srad_step(x, float(step))
    return _finish(x)


def _srad_step(x: np.ndarray, step: float) -> np.ndarray:
    # Differences across the faces between vertical / horizontal neighbours. Faces on the image border carry no
    # flux: a one-pixel reflection repeats the edge pixel, so its difference is zero.
    dv = x[1:] - x[:-1]
    dh = x[:, 1:] - x[:, :-1]
    c = _srad_coefficient(x, _gather(dv, dh, -1.0), _gather(dv * dv, dh * dh, 1.0))
    # Flux through a pixel's south/east face uses the neighbour's c, as the neighbour's north/west flux does:
    # each face carries one flux, so the scheme conserves the total intensity.
    return x + (0.25 * step) * _gather(c[1:] * dv, c[:, 1:] * dh, -1.0)


def _gather(vertical: np.ndarray, horizontal: np.ndarray, sign: float) -> np.ndarray:
    """Per pixel, the sum of the values on its four faces, those on the north and west faces times ``sign``.

    ``vertical[i, j]`` lies on the face between pixels (i, j) and (i + 1, j); ``horizontal[i, j]`` between
    (i, j) and (i, j + 1). A difference ``x[i + 1] - x[i]`` is pixel i's south difference and minus pixel
    i + 1's north difference, hence ``sign = -1`` for differences and fluxes, ``+1`` for squares.
    """
    out = np.zeros((horizontal.shape[0], vertical.shape[1]), vertical.dtype)
    out[:-1] += vertical
    out[:, :-1] += horizontal
    if sign < 0:
        out[1:] -= vertical
        out[:, 1:] -= horizontal
    else:
        out[1:] += vertical
        out[:, 1:] += horizontal
    return out


def _srad_coefficient(x: np.ndarray, diff_sum: np.ndarray, diff_sq: np.ndarray) -> np.ndarray:
    """SRAD's ``c(q)`` in [0, 1] from the sum and the sum of squares of the four neighbour differences.

    With ``S = diff_sum``, ``Q = diff_sq``, the paper's ``q**2 = (|grad I|**2 / 2 - (lap I)**2 / 16) /
    (1 + lap I / 4)**2`` (gradient and Laplacian divided by ``I``) simplifies to ``(8 Q - S**2) / (4 I + S)**2``.
    """
    # 8Q >= S^2 by Cauchy-Schwarz; 4I + S is the sum of the four neighbours (with I floored), zero only for a
    # lone bright pixel among black ones: an edge, where q is infinite -- capped so the median and c stay finite.
    num = 8.0 * diff_sq - diff_sum * diff_sum
    den = np.maximum(x, _SRAD_FLOOR)
    den *= 4.0
    den += diff_sum
    den *= den
    with np.errstate(over="ignore"):
        q2 = np.divide(num, den, out=np.full_like(num, _Q2_MAX), where=den > 0)
    np.clip(q2, 0.0, _Q2_MAX, out=q2)
    q02 = _srad_scale2(q2, x)
    # c(q) rewritten as q0^2 (1 + q0^2) / (q^2 + q0^4): no 0/0 when q0 = 0 unless q = 0 too (flat image: c = 1).
    top = q02 * (1.0 + q02)
    q2 += q02 * q02
    c = np.divide(top, q2, out=np.ones_like(q2), where=q2 > 0)
    return np.minimum(c, 1.0, out=c)


def _srad_scale2(q2: np.ndarray, x: np.ndarray) -> float:
    """``q0**2``: median of ``q2`` over the pixels brighter than :data:`DARK_FLOOR` (all if none are), on every
    other row and column -- a quarter of the pixels is plenty for a median and four times cheaper."""
    q2, x = q2[::2, ::2], x[::2, ::2]
    bright = x > DARK_FLOOR
    return float(np.median(q2[bright] if bright.any() else q2))


# ---------------------------------------------------------------------------------------------------- registry


FILTERS: dict[str, Callable[..., np.ndarray]] = {
    "none": _identity,
    "gaussian": gaussian,
    "median": median,
    "bilateral": bilateral,
    "nlm": nlm,
    "lee": lee,
    "frost": frost,
    "kuan": kuan,
    "srad": srad,
}
"""Every value of ``preprocess.filter``, mapped to its filter; keyword names match ``preprocess.filters.<name>``."""


def _parameter_names(name: str) -> tuple[str, ...]:
    """The keyword parameters of filter ``name`` (everything after ``img``)."""
    return tuple(inspect.signature(_lookup(name)).parameters)[1:]


def _lookup(name: str) -> Callable[..., np.ndarray]:
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; valid: {', '.join(FILTERS)}")
    return FILTERS[name]


def apply_filter(img: Any, name: str, **params: Any) -> np.ndarray:
    """Apply filter ``name`` with keyword ``params``.

    Raises ``ValueError`` for an unknown filter (listing the valid names), an unknown parameter (listing the
    filter's parameters) or an out-of-range value (naming the parameter).
    """
    fn = _lookup(name)
    valid = _parameter_names(name)
    for key in params:
        if key not in valid:
            raise ValueError(f"filter {name!r} has no parameter {key!r}; valid: {', '.join(valid) or '(none)'}")
    return fn(img, **params)
