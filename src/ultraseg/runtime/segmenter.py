"""Run the deployable model anywhere: NumPy, OpenCV and ONNX Runtime, no PyTorch and no training code.

Everything that turns a scan into an answer is read from the ONNX file's metadata: the preprocessing params (speckle
filter, CLAHE), the input size and normalisation, whether to average the model over a left-right flip, and the
threshold and post-processing rule chosen on val. A
:class:`Segmenter` takes an image of any size, greyscale, RGB(A) or 16-bit, and returns a :class:`Segmentation` at
the image's own resolution.

>>> import numpy as np
>>> segmenter = Segmenter(MODEL)                 # e.g. "models/deploy/ultraseg.int8.onnx"
>>> frame = np.full((300, 400), 90, np.uint8)     # any size; grey, RGB(A) or 16-bit
>>> result = segmenter.segment(frame, pixel_spacing=(0.1, 0.1))
>>> result.mask.shape, result.probability.shape, result.mask.dtype
((300, 400), (300, 400), dtype('bool'))
>>> result.lesion_present == bool(result.mask.any()), result.area_px == int(result.mask.sum())
(True, True)
>>> sorted(result.timings)
['model_ms', 'postprocess_ms', 'preprocess_ms']
>>> len(segmenter.segment_batch([frame, frame[:100]]))
2
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from ultraseg import params as params_mod
from ultraseg.errors import DataError
from ultraseg.params import PreprocessParams
from ultraseg.params import StreamParams
from ultraseg.runtime.postprocess import PostProcess
from ultraseg.runtime.stream import PER_FRAME, Smoother
from ultraseg.runtime.preprocess import normalize, preprocess, resize_probabilities
from ultraseg.runtime.sources import to_grey

REQUIRED_METADATA = ("preprocess", "size", "normalize", "threshold")
"""What a model file must carry for the runtime to use it (the pipeline's export writes all of them)."""


@dataclass
class Segmentation:
    """The answer for one image, at the image's own resolution."""

    mask: np.ndarray
    """Boolean lesion mask (H, W)."""
    probability: np.ndarray
    """Lesion probability per pixel (H, W), float32, before thresholding."""
    score: float
    """Image-level score: the highest lesion probability in the image."""
    lesion_present: bool
    area_px: int
    area_mm2: float | None
    """Lesion area in mm², when the pixel spacing is known."""
    bbox: tuple[int, int, int, int] | None
    """(x, y, width, height) around every lesion pixel; None when there is none."""
    contour: np.ndarray | None
    """Outer contour of the largest lesion, (N, 2) pixel coordinates (x, y); None when there is none."""
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds spent in ``preprocess_ms``, ``model_ms`` and ``postprocess_ms``."""


def read_metadata(session: ort.InferenceSession, path: Path) -> dict[str, Any]:
    """The ultraseg metadata of a loaded model; a file without it is refused, naming what is missing."""
    raw = session.get_modelmeta().custom_metadata_map
    missing = [key for key in REQUIRED_METADATA if key not in raw]
    if missing:
        raise DataError(f"{path}: not an ultraseg model: its metadata lacks {', '.join(missing)} "
                        "(use the file the pipeline writes, models/deploy/ultraseg.int8.onnx)")
    try:
        return {key: json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: unreadable ultraseg metadata ({err})") from None


class Segmenter:
    """A deployable ultraseg ONNX file, ready to segment images on the CPU.

    ``threads``: ONNX Runtime's intra-op threads (1 suits an edge device and leaves the other cores to the caller).
    ``postprocess`` overrides the rule stored in the file (files exported before deployment carry only a threshold).
    ``flip`` overrides the file's ``flip``: average the probabilities of the image and of its mirror image, which
    costs a second model call (a breast scan has no preferred left or right, so both views are equally valid).
    ``stream`` overrides how :meth:`stream` smooths the decision over frames (files written before that was stored
    decide each frame alone).
    """

    def __init__(self, model: str | Path, threads: int = 1, postprocess: PostProcess | None = None,
                 flip: bool | None = None, stream: StreamParams | None = None) -> None:
        self.path = Path(model)
        if not self.path.is_file():
            raise DataError(f"{self.path}: model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types for files it cannot parse
            raise DataError(f"{self.path}: not a loadable ONNX model ({str(err).splitlines()[0]})") from None
        self.meta = read_metadata(self.session, self.path)
        self.preprocess_params: PreprocessParams = params_mod.from_dict(self.meta["preprocess"], PreprocessParams)
        self.size: int = int(self.meta["size"])
        self.normalize: str = self.meta["normalize"]
        stored = self.meta.get("postprocess") or {"threshold": self.meta["threshold"]}
        self.postprocess = postprocess or PostProcess.from_dict(stored)
        self.flip: bool = bool(self.meta.get("flip", False)) if flip is None else flip
        stored_stream = self.meta.get("stream")
        self.stream_rule: StreamParams = stream or (
            params_mod.from_dict(stored_stream, StreamParams) if stored_stream else PER_FRAME)
        self.input = self.session.get_inputs()[0].name

    def __repr__(self) -> str:
        return f"Segmenter({str(self.path)!r}, size={self.size}, flip={self.flip}, postprocess={self.postprocess})"

    def probability(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Lesion probabilities (H, W) at the image's resolution, and the preprocessing and model times (ms)."""
        start = time.perf_counter()
        grey = to_grey(image)
        x = normalize(preprocess(grey, self.preprocess_params), self.normalize)[None, None]
        mid = time.perf_counter()
        prob = self._sigmoid_of(x)
        if self.flip:
            prob = 0.5 * (prob + self._sigmoid_of(x[..., ::-1])[:, ::-1])
        end = time.perf_counter()
        prob = resize_probabilities(prob, grey.shape)
        done = time.perf_counter()
        return prob, {"preprocess_ms": 1000 * (mid - start + done - end), "model_ms": 1000 * (end - mid)}

    def _sigmoid_of(self, x: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0][0, 0]
        return 1.0 / (1.0 + np.exp(-logits))

    def segment(self, image: np.ndarray, pixel_spacing: Sequence[float] | None = None,
                threshold: float | None = None) -> Segmentation:
        """Segment one image. ``pixel_spacing``: (row, column) mm per pixel, for the area in mm²; ``threshold``
        replaces the stored pixel threshold for this call (the rest of the rule is kept)."""
        prob, timings = self.probability(image)
        start = time.perf_counter()
        rule = self.postprocess if threshold is None else dataclasses.replace(self.postprocess, threshold=threshold)
        result = describe(rule.apply(prob), prob, pixel_spacing)
        result.timings = timings | {"postprocess_ms": 1000 * (time.perf_counter() - start)}
        return result

    def segment_batch(self, images: Iterable[np.ndarray], **kwargs: Any) -> list[Segmentation]:
        """:meth:`segment` of every image, in order."""
        return [self.segment(image, **kwargs) for image in images]

    def stream(self, frames: Iterable[np.ndarray], **kwargs: Any) -> Iterator[Segmentation]:
        """:meth:`segment` of each frame as it arrives (a video, a frame grabber), one result per frame, with the
        lesion decision smoothed over recent frames (:mod:`ultraseg.runtime.stream`)."""
        smoother = self.smoother()
        for frame in frames:
            yield self.smoothed(self.segment(frame, **kwargs), smoother, **kwargs)

    def smoother(self) -> Smoother:
        """A fresh smoother for one stream, at this file's stream rule and operating point."""
        return Smoother(self.stream_rule, self.postprocess.gate)

    def smoothed(self, result: Segmentation, smoother: Smoother, pixel_spacing: Sequence[float] | None = None,
                 threshold: float | None = None) -> Segmentation:
        """``result`` with ``smoother``'s decision: no mask where it says no lesion, and the rule's mask without
        its image-level gate where it says lesion against the frame's own answer."""
        present = smoother.update(result.lesion_present, result.score)
        if present == result.lesion_present:
            return result
        rule = dataclasses.replace(self.postprocess, gate=0.0)
        if threshold is not None:
            rule = dataclasses.replace(rule, threshold=threshold)
        mask = rule.apply(result.probability) if present else np.zeros_like(result.mask)
        out = describe(mask, result.probability, pixel_spacing, present=present)
        out.timings = result.timings
        return out


def describe(mask: np.ndarray, prob: np.ndarray, pixel_spacing: Sequence[float] | None = None,
             present: bool | None = None) -> Segmentation:
    """A :class:`Segmentation` of a final mask: score, area, bounding box and the largest lesion's contour.
    ``present`` is the image-level answer when a stream's smoothed decision sets it (default: the mask has pixels)."""
    area = int(mask.sum())
    bbox = contour = None
    if area:
        bbox = tuple(int(v) for v in cv2.boundingRect(mask.astype(np.uint8)))
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = max(contours, key=cv2.contourArea)[:, 0, :]
    area_mm2 = None if pixel_spacing is None else area * float(pixel_spacing[0]) * float(pixel_spacing[1])
    return Segmentation(mask=mask, probability=prob, score=float(prob.max()), lesion_present=area > 0 if present is None else present,
                        area_px=area, area_mm2=area_mm2, bbox=bbox, contour=contour)
