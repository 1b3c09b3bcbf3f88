"""Train-time augmentation of a greyscale ultrasound image and its binary lesion mask.

``Augment(params)(image, mask, rng)`` draws every random choice from ``rng`` first, then applies, in order:

1. geometry, identical for image and mask: horizontal flip; one affine warp (rotation about the centre,
   translation, isotropic scale, a width stretch); optional elastic deformation (Simard et al., "Best practices for
   convolutional neural networks applied to visual document analysis", ICDAR 2003). Image: bilinear, fill = image
   minimum (the background of a scan is black). Mask: nearest neighbour, fill 0 -- never interpolated and thresholded.
   An optional ``soft`` map (a teacher's logits for the unaugmented image) gets the same geometry, bilinear, with
   its minimum (the teacher's surest background) as fill. Then an optional fan-shaped field of view: outside it
   the image is black and the mask empty (nothing there can be seen).
2. an acoustic shadow and multiplicative speckle, on the image only;
3. brightness, contrast and gamma, on the image only;
4. burned-in calipers and text, on the image only: BUSI marks many lesions, and a model must not learn that marks
   mean lesion.

Stretch, speckle grain, field of view and marks imitate other scanners, as the evaluation shifts of
:mod:`ultraseg.shifts` do, and the marks and field of view come from the same drawing code (:mod:`ultraseg.scanner`);
but here the strength is drawn per sample in network-size, normalised space, while a shift is one stated severity on
the scan as delivered.

The order follows the scan: tissue reflectivity is attenuated (shadow) and carries speckle before the scanner's
gain, contrast and display curve are applied. There is no vertical flip or 90-degree rotation: the beam enters at
the top, so skin, shadows and depth attenuation always run top to bottom.

The image is float32 and already normalised (possibly z-scored, so negative); the mask is uint8 in {0, 1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ultraseg.params import AugmentParams
from ultraseg.scanner import draw_marks, fan

_SPECKLE_GRAIN = 1.0
"""Sigma, in pixels, of the Gaussian that correlates the speckle field: real speckle grains span a few pixels."""
_SHADOW_TOP = (0.2, 0.7)
"""Shadow start depth, as fractions of the height: behind structures at lesion depth, not under the skin."""
_SHADOW_HALF_WIDTH = (0.03, 0.10)
"""Shadow half-width where it starts, as fractions of the width."""
_SHADOW_SPREAD = 0.25
"""Largest widening of the shadow's half-width per pixel of depth (a fan of up to about 14 degrees)."""
_SHADOW_ONSET = 0.04
"""Depth, as a fraction of the height, over which a shadow fades in: a hard horizontal edge would be an artefact."""
_FAN_HALF_ANGLE = (25.0, 55.0)
"""Half-angle range of a convex probe's field of view, in degrees."""
_FAN_APEX = (0.0, 0.15)
"""Height of the fan's apex above the top edge, as fractions of the image height."""


def worker_seed(base_seed: int, epoch: int, index: int) -> np.random.Generator:
    """A generator for sample ``index`` of ``epoch``.

    Seeded from the triple rather than from a worker's position in a stream, so the augmentation of a sample does
    not depend on the number of DataLoader workers or on the order they run in.
    """
    return np.random.default_rng(np.random.SeedSequence([base_seed, epoch, index]))


# ---------------------------------------------------------------------------------------------------- parts


def affine_matrix(shape: tuple[int, int], angle: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """2x3 matrix: rotate ``angle`` degrees (counter-clockwise) and scale about the centre, then shift (x, y) px."""
    h, w = shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    matrix[:, 2] += shift
    return matrix


def elastic_field(shape: tuple[int, int], alpha: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 2) float32 displacements (dx, dy): blurred uniform noise scaled so the largest equals ``alpha``."""
    h, w = shape
    # The blurred field has no detail finer than sigma, so it is drawn and blurred on a grid `step` times coarser
    # (still >= 2 samples per sigma) and resized up: the same autocorrelation from fewer random draws.
    step = max(1, int(sigma // 2))
    noise = rng.random((math.ceil(h / step), math.ceil(w / step), 2), dtype=np.float32)
    noise -= 0.5
    coarse_sigma = sigma / step
    size = 2 * math.ceil(3 * coarse_sigma) + 1
    field = cv2.GaussianBlur(noise, (size, size), coarse_sigma)
    field = cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, 2)
    # Scaled by its peak so that alpha means pixels, whatever the size and sigma that the blur shrank it by.
    peak = float(np.abs(field).max())
    if peak > 0:
        field *= alpha / peak
    return field


def warp(array: np.ndarray, matrix: np.ndarray | None, field: np.ndarray | None, nearest: bool = False) -> np.ndarray:
    """Apply the affine ``matrix`` then the displacement ``field`` (either may be None) to one (h, w) map:
    bilinear with the map's minimum as fill, or, for masks, ``nearest`` neighbour with fill 0."""
    if matrix is None and field is None:
        return array
    h, w = array.shape
    flags, fill = (cv2.INTER_NEAREST, 0) if nearest else (cv2.INTER_LINEAR, float(array.min()))
    if field is None:
        return cv2.warpAffine(array, matrix, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    # With a field, the affine is folded into the same sampling maps: one interpolation blurs less than two.
    map_x = np.arange(w, dtype=np.float32)[None, :] + field[..., 0]
    map_y = np.arange(h, dtype=np.float32)[:, None] + field[..., 1]
    if matrix is not None:
        (a, b, c), (d, e, f) = cv2.invertAffineTransform(matrix).astype(np.float32)
        map_x, map_y = a * map_x + b * map_y + c, d * map_x + e * map_y + f
    return cv2.remap(array, map_x, map_y, flags, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def warp_pair(
    image: np.ndarray, mask: np.ndarray, matrix: np.ndarray | None, field: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`warp` an image (bilinear) and its mask (nearest) alike."""
    return warp(image, matrix, field), warp(mask, matrix, field, nearest=True)


def speckle(image: np.ndarray, cv: float, rng: np.random.Generator, grain: float = _SPECKLE_GRAIN) -> np.ndarray:
    """Multiply the image's height above its minimum by a spatially correlated, unit-mean noise field.

    After normalisation the values are not echo amplitudes (they may be negative), but ``image - min`` is: the
    black background sits at the minimum and stays there, while brighter tissue gets proportionally more noise,
    as real speckle does. The field is log-normal, ``exp(s*z - s**2/2)`` with ``s**2 = log(1 + cv**2)`` and ``z`` a
    standardised Gaussian-blurred noise (a weighted sum of many uniforms, so close to Gaussian): it is positive,
    right-skewed like Rayleigh speckle, has mean 1 (no brightness drift) and coefficient of variation ``cv``.
    """
    z = cv2.GaussianBlur(rng.random(image.shape, dtype=np.float32), (0, 0), grain)
    z -= float(z.mean())
    sd = float(z.std())
    if sd == 0:  # a 1-pixel image has no field to standardise
        return image.copy()
    s2 = math.log1p(cv * cv)
    noise = np.exp(z * (math.sqrt(s2) / sd) - s2 / 2)
    lo = float(image.min())
    return (image - lo) * noise + lo


@dataclass(frozen=True)
class Shadow:
    """An acoustic shadow: a band under ``(x, top)`` that widens with depth, as behind an attenuating lesion."""

    x: float
    """Centre column, in pixels."""
    top: float
    """Row where the shadow starts, in pixels (fractional)."""
    half_width: float
    """Half-width at ``top``, in pixels."""
    spread: float
    """Growth of the half-width per pixel of depth."""
    strength: float
    """Fraction of intensity removed at the centre of the fully developed shadow."""


def shadow(image: np.ndarray, s: Shadow) -> np.ndarray:
    """Darken the rows from ``s.top`` down; rows above are returned unchanged, bit for bit.

    Like speckle it scales ``image - min``, so the shadow fades tissue towards the black background level.
    """
    if not s.half_width > 0:
        raise ValueError(f"shadow half_width must be > 0, got {s.half_width!r}")
    h, w = image.shape
    out = image.copy()
    top = min(h, math.ceil(s.top))
    widest = s.half_width + s.spread * (h - s.top)
    left, right = max(0, math.floor(s.x - widest)), min(w, math.ceil(s.x + widest) + 1)
    if top == h or left >= right:
        return out
    # Only the box that holds the fan is touched, so pixels outside it stay bit for bit what they were.
    depth = np.arange(top, h, dtype=np.float32)[:, None] - np.float32(s.top)
    half = s.half_width + s.spread * depth
    # Smoothstep across the band: full strength at the centre, zero slope at the edges, so no edge artefact.
    t = np.clip(1 - np.abs(np.arange(left, right, dtype=np.float32) - np.float32(s.x)) / half, 0, 1)
    onset = np.clip(depth / max(1.0, _SHADOW_ONSET * h), 0, 1)
    gain = 1 - np.float32(s.strength) * onset * (t * t * (3 - 2 * t))
    lo = float(image.min())
    out[top:, left:right] = (image[top:, left:right] - lo) * gain + lo
    return out


def levels(image: np.ndarray, contrast: float, brightness: float, gamma: float) -> np.ndarray:
    """Contrast about the mean, brightness in units of the std, then gamma on the [min, max] range."""
    mean, std = float(image.mean()), float(image.std())
    out = image * np.float32(contrast) + np.float32(mean * (1 - contrast) + brightness * std)
    lo, hi = float(out.min()), float(out.max())
    if gamma == 1 or hi <= lo:
        return out
    # Rescaled to [0, 1] first because gamma needs non-negative input and should keep the range.
    unit = (out - lo) * np.float32(1 / (hi - lo))
    np.power(unit, np.float32(gamma), out=unit)
    return unit * np.float32(hi - lo) + lo


# ---------------------------------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class _Plan:
    """Everything drawn for one sample; None means the part does not fire."""

    flip: bool
    matrix: np.ndarray | None
    elastic_seed: int | None
    shadow: Shadow | None
    speckle_seed: int | None
    levels: tuple[float, float, float] | None
    fan: tuple[float, float] | None
    """Half-angle (degrees) and apex height (fraction of the height) of the field of view."""
    marks_seed: int | None


def _uniform(u: float, magnitude: float) -> float:
    """Map ``u`` in [0, 1) to [-magnitude, magnitude)."""
    return (2 * u - 1) * magnitude


class Augment:
    """Seeded, switchable augmentation of an (image, mask) pair; see the module docstring for the parts."""

    def __init__(self, params: AugmentParams) -> None:
        params.validate("augment")
        self.params = params

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, soft: np.ndarray | None = None
    ) -> tuple[np.ndarray, ...]:
        """Return a new float32 image and uint8 mask of the input shape, plus the warped float32 ``soft`` map when
        one is given; the inputs are not modified. ``soft`` follows the geometry only: it stands for what the
        scan shows, which gain, noise or a shadow do not change."""
        if image.ndim != 2 or image.shape != mask.shape or (soft is not None and soft.shape != image.shape):
            shapes = " and ".join(str(a.shape) for a in (image, mask, soft) if a is not None)
            raise ValueError(f"expected 2-D image, mask and soft map of one shape, got {shapes}")
        image = image.astype(np.float32)  # astype copies: later steps may work in place
        mask = mask.astype(np.uint8)
        if self.params.enabled:
            image, mask, soft = self._augment(image, mask, soft, rng)
        return (image, mask) if soft is None else (image, mask, soft.astype(np.float32))

    def _augment(
        self, image: np.ndarray, mask: np.ndarray, soft: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        plan = self._draw(rng, image.shape)
        if plan.flip:
            image, mask = cv2.flip(image, 1), cv2.flip(mask, 1)
            soft = None if soft is None else cv2.flip(soft, 1)
        field = None
        if plan.elastic_seed is not None:
            p, field_rng = self.params, np.random.default_rng(plan.elastic_seed)
            field = elastic_field(image.shape, p.elastic_alpha, p.elastic_sigma, field_rng)
        image, mask = warp_pair(image, mask, plan.matrix, field)
        soft = None if soft is None else warp(soft, plan.matrix, field)
        if plan.fan is not None:
            inside = fan(image.shape, *plan.fan)
            image, mask = np.where(inside, image, image.min()), mask * inside.astype(np.uint8)
        if plan.shadow is not None:
            image = shadow(image, plan.shadow)
        if plan.speckle_seed is not None:
            image = self._speckle(image, np.random.default_rng(plan.speckle_seed))
        if plan.levels is not None:
            image = levels(image, *plan.levels)
        if plan.marks_seed is not None:
            image = self._marks(image, np.random.default_rng(plan.marks_seed))
        return image, mask, soft

    def _speckle(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        # The grain is drawn only when it can vary, so the default's noise fields stay as they were.
        grain = _SPECKLE_GRAIN + rng.random() * (p.speckle_grain - _SPECKLE_GRAIN) if p.speckle_grain > 1 else 1.0
        return speckle(image, p.speckle, rng, grain)

    def _marks(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        canvas = np.zeros(image.shape, np.uint8)
        draw_marks(canvas, int(rng.integers(1, self.params.annotations + 1)), rng)
        return np.where(canvas > 0, image.max(), image).astype(np.float32)

    def _draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> _Plan:
        # Each part takes the same number of draws whether it fires or not, and the noise fields come from seeds
        # drawn here: switching one part off, or changing its magnitude, leaves every other part's draws as they
        # were, so an ablation compares the same flips, warps and shadows.
        p = self.params
        flip = bool(rng.random() < p.hflip)
        matrix = self._draw_affine(rng, shape)
        elastic_seed = self._draw_seed(rng, p.elastic_p, p.elastic_alpha)
        shadow_ = self._draw_shadow(rng, shape)
        speckle_seed = self._draw_seed(rng, p.speckle_p, p.speckle)
        levels_ = self._draw_levels(rng)
        # Parts added later draw after the earlier ones, so that they leave the earlier parts' draws unchanged.
        matrix = self._draw_stretch(rng, shape, matrix)
        return _Plan(flip=flip, matrix=matrix, elastic_seed=elastic_seed, shadow=shadow_, speckle_seed=speckle_seed,
                     levels=levels_, fan=self._draw_fan(rng), marks_seed=self._draw_seed(rng, p.annotations_p, 1))

    def _draw_affine(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray | None:
        p = self.params
        fire, angle, scale, tx, ty = rng.random(5)
        if fire >= p.affine_p or not (p.rotate or p.scale or p.translate or p.aspect):
            return None
        h, w = shape
        shift = (_uniform(tx, p.translate) * w, _uniform(ty, p.translate) * h)
        return affine_matrix(shape, _uniform(angle, p.rotate), 1 + _uniform(scale, p.scale), shift)

    def _draw_stretch(self, rng: np.random.Generator, shape: tuple[int, int],
                      matrix: np.ndarray | None) -> np.ndarray | None:
        """The affine ``matrix`` after a width stretch about the centre; the stretch rides on the affine warp."""
        u = rng.random()
        if matrix is None or self.params.aspect == 0:
            return matrix
        stretch = np.eye(3)
        stretch[0, 0] = 1 + _uniform(u, self.params.aspect)
        stretch[0, 2] = (1 - stretch[0, 0]) * (shape[1] - 1) / 2
        return (np.vstack([matrix, [0, 0, 1]]) @ stretch)[:2]

    def _draw_fan(self, rng: np.random.Generator) -> tuple[float, float] | None:
        fire, angle, apex = rng.random(3)
        if fire >= self.params.sector_p:
            return None
        return (_FAN_HALF_ANGLE[0] + angle * (_FAN_HALF_ANGLE[1] - _FAN_HALF_ANGLE[0]),
                _FAN_APEX[0] + apex * (_FAN_APEX[1] - _FAN_APEX[0]))

    @staticmethod
    def _draw_seed(rng: np.random.Generator, probability: float, magnitude: float) -> int | None:
        fire, seed = rng.random(), int(rng.integers(2**63))
        return seed if fire < probability and magnitude > 0 else None

    def _draw_shadow(self, rng: np.random.Generator, shape: tuple[int, int]) -> Shadow | None:
        p = self.params
        fire, x, top, half, spread, strength = rng.random(6)
        if fire >= p.shadow_p or p.shadow_strength == 0:
            return None
        h, w = shape
        return Shadow(
            x=x * w,
            top=(_SHADOW_TOP[0] + top * (_SHADOW_TOP[1] - _SHADOW_TOP[0])) * h,
            half_width=(_SHADOW_HALF_WIDTH[0] + half * (_SHADOW_HALF_WIDTH[1] - _SHADOW_HALF_WIDTH[0])) * w,
            spread=spread * _SHADOW_SPREAD,
            # At least half the configured strength, so that a shadow which fires is visible.
            strength=(0.5 + 0.5 * strength) * p.shadow_strength,
        )

    def _draw_levels(self, rng: np.random.Generator) -> tuple[float, float, float] | None:
        p = self.params
        fire, contrast, brightness, gamma = rng.random(4)
        if fire >= p.intensity_p or not (p.contrast or p.brightness or p.gamma):
            return None
        return 1 + _uniform(contrast, p.contrast), _uniform(brightness, p.brightness), 1 + _uniform(gamma, p.gamma)
