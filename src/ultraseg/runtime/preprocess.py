"""The preprocessing pipeline: greyscale -> shrink -> speckle filter -> CLAHE -> resize, and the input normalisation.

A large frame is first shrunk by a whole factor (:func:`shrink`) to about twice the network's side, the resolution
the enhancement sees on the training scans (the mirror's 256 px for a 128 px network): the filters' windows are in
pixels and CLAHE's clip acts on local histograms, so enhancing a scanner's full-resolution frame would hand the
network a different image than it was trained on, and would cost most of a frame's time.

The preprocess stage (:mod:`ultraseg.pipeline.preprocess`) stores the uint8 result of every step before the normalisation (compact,
lossless for what the model sees) and :func:`normalize` maps it to the network input. Training, evaluation and the
ONNX deployment all call the same :func:`normalize`, with the mode recorded in every checkpoint.
"""

from __future__ import annotations

import cv2
import numpy as np

from ultraseg.params import PreprocessParams
from ultraseg.runtime import filters


def enhance(image: np.ndarray, params: PreprocessParams, filter_name: str | None = None) -> np.ndarray:
    """Speckle filter then CLAHE, at the image's own resolution; uint8 in, uint8 out."""
    name = params.filter if filter_name is None else filter_name
    if name == "none" and image.dtype == np.uint8:  # the same pixels without a float round trip, on every frame
        out = image
    else:
        out = filters.apply_filter(image, name, **params.filters.kwargs(name))
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if params.clahe.enabled:
        tiles = (params.clahe.tiles, params.clahe.tiles)
        out = cv2.createCLAHE(clipLimit=params.clahe.clip, tileGridSize=tiles).apply(out)
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    # INTER_AREA averages when shrinking (no aliasing); linear when a small image is enlarged
    shrink = image.shape[0] >= size and image.shape[1] >= size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a binary mask to ``size`` (side, or (height, width)); never interpolated."""
    height, width = (size, size) if isinstance(size, int) else size
    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)


def resize_probabilities(prob: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Float32 probabilities (H, W) at network size, bilinearly resized (cv2 INTER_LINEAR, half-pixel centres as
    torch's ``align_corners=False``) to ``size_hw`` = (height, width) of the original image, to threshold there."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"expected 2-D probabilities, got shape {prob.shape}")
    height, width = size_hw
    return cv2.resize(prob, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def shrink(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` area-averaged by the largest whole factor that keeps its long side at least ``2 * size``; as it is
    when no factor does. A whole factor takes OpenCV's fast path when it divides both sides (640 x 480 by 2)."""
    height, width = image.shape[:2]
    factor = max(height, width) // (2 * size)
    if factor < 2:
        return image
    return cv2.resize(image, (width // factor, height // factor), interpolation=cv2.INTER_AREA)


def preprocess(image: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """Everything the stage does to one greyscale image: the stored uint8 network-size array."""
    return resize_image(enhance(shrink(image, params.size), params), params.size)


def normalize(images: np.ndarray, mode: str) -> np.ndarray:
    """uint8 arrays (..., H, W) to float32 network input: ``unit`` x/255, ``zscore`` per image mean 0, std 1."""
    x = images.astype(np.float32) / 255.0
    if mode == "unit":
        return x
    if mode == "zscore":
        mean = x.mean(axis=(-2, -1), keepdims=True)
        std = x.std(axis=(-2, -1), keepdims=True)
        return (x - mean) / np.maximum(std, 1e-6)
    raise ValueError(f"unknown normalisation {mode!r}; valid: unit, zscore")
