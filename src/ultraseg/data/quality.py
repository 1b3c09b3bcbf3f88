"""Figures of merit that show whether a speckle filter helps: smoother tissue, unharmed lesion edges.

- :func:`enl`, the equivalent number of looks ``mean**2 / var`` of homogeneous tissue patches, rises as speckle is
  suppressed (``var`` is the population variance). The patches come from :func:`speckle_patches` on the original
  image and are reused for the filtered one, so both are measured on the same tissue.
- :func:`edge_preservation` is the edge-preservation index beta of Sattar et al. ("Image enhancement based on a
  nonlinear multiscale method", IEEE TIP 1997): the correlation of the Laplacians of the original and filtered
  images in a band around the lesion boundary. 1 means the edges are untouched.
- :func:`filter_quality` reports both for one image.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

TISSUE_FLOOR = 20.0
"""Patches whose mean is at or below this grey level are the black frame around the scan (or shadow), not tissue."""

Patch = tuple[slice, slice]


def _as_float(img: Any, name: str) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D image, got shape {arr.shape}")
    return arr


def _as_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"mask: expected shape {shape}, got {m.shape}")
    return m != 0


def speckle_patches(img: Any, mask: Any, patch: int = 16, count: int = 8) -> list[Patch]:
    """The ``count`` most homogeneous ``patch``-square tissue windows of ``img``, as (row, column) slices.

    Candidates are the tiles of a ``patch``-pixel grid anchored at the top-left corner (so they never overlap)
    that contain no lesion pixel (``mask`` nonzero) and whose mean exceeds :data:`TISSUE_FLOOR`; those with the
    lowest coefficient of variation come first. Fewer than ``count`` come back when fewer tiles qualify.
    """
    if not isinstance(patch, (int, np.integer)) or isinstance(patch, bool) or patch < 2:
        raise ValueError(f"patch: expected an integer >= 2, got {patch!r}")
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count: expected an integer >= 1, got {count!r}")
    x = _as_float(img, "img")
    lesion = _as_mask(mask, x.shape)
    rows, cols = x.shape[0] // patch, x.shape[1] // patch
    if rows == 0 or cols == 0:
        return []
    tiles = x[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch)
    mean = tiles.mean(axis=(1, 3))
    std = tiles.std(axis=(1, 3))
    touched = lesion[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch).any(axis=(1, 3))
    eligible = ~touched & (mean > TISSUE_FLOOR)
    cv = np.where(eligible, std / np.where(eligible, mean, 1.0), np.inf).ravel()
    order = np.argsort(cv, kind="stable")[: min(count, int(eligible.sum()))]
    return [_tile(int(i), cols, patch) for i in order]


def _tile(index: int, cols: int, patch: int) -> Patch:
    r, c = divmod(index, cols)
    return slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch)


def enl(img: Any, patches: list[Patch]) -> float:
    """Equivalent number of looks: the mean over ``patches`` of ``mean**2 / var`` (population variance).

    A flat bright patch has infinite ENL; NaN when there are no patches or a patch is flat and black.
    """
    x = _as_float(img, "img")
    looks = [_looks(x[rs, cs]) for rs, cs in patches]
    return float(np.mean(looks)) if looks else math.nan


def _looks(region: np.ndarray) -> float:
    mean, var = region.mean(), region.var()
    if var > 0:
        return float(mean * mean / var)
    return math.inf if mean != 0 else math.nan


def _boundary_band(lesion: np.ndarray, band: int) -> np.ndarray:
    """Pixels within about ``band`` pixels (a disc) of the lesion boundary, on either side of it."""
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    m = lesion.astype(np.uint8)
    # OpenCV's default border for erosion is +inf, so a lesion cut by the image edge has no boundary there.
    return cv2.dilate(m, disc) > cv2.erode(m, disc)


def edge_preservation(original: Any, filtered: Any, mask: Any, band: int = 3) -> float:
    """Sattar's beta: correlation of the 3x3 Laplacians of ``original`` and ``filtered``, each minus its mean,
    within ``band`` pixels of the boundary of ``mask`` (the whole image when ``mask`` is empty).

    1.0 means edges are perfectly preserved; NaN when the region is empty or either Laplacian is constant on it.
    """
    if not isinstance(band, (int, np.integer)) or isinstance(band, bool) or band < 1:
        raise ValueError(f"band: expected an integer >= 1, got {band!r}")
    a = _as_float(original, "original")
    b = _as_float(filtered, "filtered")
    if b.shape != a.shape:
        raise ValueError(f"filtered: expected shape {a.shape}, got {b.shape}")
    lesion = _as_mask(mask, a.shape)
    region = _boundary_band(lesion, band) if lesion.any() else np.ones(a.shape, bool)
    if not region.any():
        return math.nan
    la = _laplacian(a)[region]
    lb = _laplacian(b)[region]
    la -= la.mean()
    lb -= lb.mean()
    norm = math.sqrt(float(la @ la) * float(lb @ lb))
    return float(la @ lb) / norm if norm > 0 else math.nan


def _laplacian(x: np.ndarray) -> np.ndarray:
    # ksize=1 is the 3x3 kernel [[0, 1, 0], [1, -4, 1], [0, 1, 0]].
    return cv2.Laplacian(x, cv2.CV_64F, ksize=1, borderType=cv2.BORDER_REFLECT)


def filter_quality(original: Any, filtered: Any, mask: Any) -> dict[str, float]:
    """``enl_ratio`` (ENL of ``filtered`` over ENL of ``original`` on the original's :func:`speckle_patches`; > 1
    means smoother speckle) and ``edge_preservation`` (:func:`edge_preservation`). NaN where undefined."""
    patches = speckle_patches(original, mask)
    before = enl(original, patches)
    after = enl(filtered, patches)
    ratio = after / before if before > 0 and math.isfinite(before) else math.nan
    return {"enl_ratio": float(ratio), "edge_preservation": edge_preservation(original, filtered, mask)}
