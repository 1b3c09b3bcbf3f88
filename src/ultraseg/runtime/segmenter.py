"""Run the deployable model anywhere: NumPy, OpenCV and ONNX Runtime, no PyTorch and no training code.

Everything that turns a scan into an answer is read from the ONNX file's metadata: the preprocessing params (speckle
filter, CLAHE), the input size and normalisation, whether to average the model over a left-right flip, and the
threshold and post-processing rule chosen on val, the image-level answer (the presence output's temperature and
operating point, see :class:`~ultraseg.runtime.postprocess.Presence`), and the out-of-distribution check
(:mod:`ultraseg.runtime.ood`).
A :class:`Segmenter` takes an image of any size, greyscale, RGB(A) or 16-bit, and returns a :class:`Segmentation`
at the image's own resolution.

>>> import numpy as np
>>> segmenter = Segmenter(MODEL)                 # e.g. "models/deploy/ultraseg.int8.onnx"
>>> frame = np.random.default_rng(0).integers(0, 256, (300, 400), np.uint8)  # any size; grey, RGB(A), 16-bit
>>> result = segmenter.segment(frame, pixel_spacing=(0.1, 0.1))
>>> result.mask.shape, result.probability.shape, result.mask.dtype
((300, 400), (300, 400), dtype('bool'))
>>> result.lesion_present or not result.mask.any(), result.area_px == int(result.mask.sum())  # no mask unless lesion
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
import warnings
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
from ultraseg.runtime.memory import retain_freed_memory
from ultraseg.runtime.model_files import OUTPUT, PRESENCE
from ultraseg.runtime.ood import FEATURES, NOT_CHECKED, OodCheck, frame_problem
from ultraseg.runtime.postprocess import PostProcess, Presence
from ultraseg.runtime.stream import PER_FRAME, Smoother
from ultraseg.runtime.preprocess import normalize, preprocess, resize_probabilities
from ultraseg.runtime.sources import check_image, to_grey

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
    """Image-level score: the calibrated presence probability ``sigmoid(logit / temperature)`` of a file with a
    presence output and its ``presence`` metadata; for older files the highest lesion probability in the image."""
    lesion_present: bool
    """The runtime's answer: ``score`` at or above :attr:`Segmenter.operating_point`, in distribution. Without it
    the mask is empty."""
    area_px: int
    area_mm2: float | None
    """Lesion area in mm², when the pixel spacing is known."""
    bbox: tuple[int, int, int, int] | None
    """(x, y, width, height) around every lesion pixel; None when there is none."""
    contour: np.ndarray | None
    """Outer contour of the largest lesion, (N, 2) pixel coordinates (x, y); None when there is none."""
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds spent in ``preprocess_ms``, ``model_ms`` and ``postprocess_ms``."""
    in_distribution: bool = True
    """Whether the frame lies within what the model was trained on (:mod:`ultraseg.runtime.ood`); a frame that
    does not gets no lesion answer: no lesion and an empty mask."""
    ood_reason: str = ""
    """Why the frame is out of distribution; "" when it is not, ``not checked`` when the model file cannot tell."""


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
    decide each frame alone). ``presence`` overrides the stored image-level answer (temperature and operating
    point), e.g. for a network file exported before deployment; the file must have the ``presence`` output.
    """

    def __init__(self, model: str | Path, threads: int = 1, postprocess: PostProcess | None = None,
                 flip: bool | None = None, stream: StreamParams | None = None,
                 presence: Presence | None = None) -> None:
        self.path = Path(model)
        if not self.path.is_file():
            raise DataError(f"{self.path}: model file not found")
        retain_freed_memory()  # frame buffers reused from frame to frame (ultraseg.runtime.memory)
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
        names = [o.name for o in self.session.get_outputs()]
        has_features = FEATURES in names
        self.output_names = [OUTPUT] + [name for name in (PRESENCE, FEATURES) if name in names]
        self.presence: Presence | None = presence
        if presence is not None and PRESENCE not in names:
            raise DataError(f"{self.path}: a presence answer was given but the file has no {PRESENCE!r} output")
        if presence is None and PRESENCE in names and "presence" in self.meta:
            try:
                self.presence = Presence.from_dict(self.meta["presence"])
            except (TypeError, ValueError) as err:
                raise DataError(f"{self.path}: bad metadata: {err}") from None
        elif presence is None:
            warnings.warn(f"{self.path}: no presence output or no calibrated operating point in this file (older "
                          "files): the score is the highest pixel probability, compared with the rule's gate",
                          stacklevel=2)
        checked = has_features and "ood" in self.meta
        try:
            self.ood: OodCheck | None = OodCheck.from_meta(self.meta["ood"]) if checked else None
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{self.path}: bad metadata: {err}") from None
        if self.ood is None:
            warnings.warn(f"{self.path}: no out-of-distribution check in this file (only the deploy stage's file "
                          "carries one): every frame is answered, marked 'not checked'", stacklevel=2)

    @property
    def operating_point(self) -> float:
        """The score at and above which the answer is "lesion": the presence threshold chosen on val, or, for older
        files, the rule's gate on the highest pixel probability."""
        return self.presence.threshold if self.presence is not None else self.postprocess.gate

    def __repr__(self) -> str:
        return f"Segmenter({str(self.path)!r}, size={self.size}, flip={self.flip}, postprocess={self.postprocess})"

    def probability(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Lesion probabilities (H, W) at the image's resolution, and the preprocessing and model times (ms)."""
        prob, _, _, timings = self._forward(image)
        return prob, timings

    def outputs(self, image: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Lesion probabilities (H, W) at the image's resolution and the raw presence logit (averaged over the
        flip when the file flips; None for a file without the ``presence`` output), from one model call."""
        prob, logit, _, _ = self._forward(image)
        return prob, logit

    def features(self, image: np.ndarray) -> np.ndarray | None:
        """The pooled deepest features (K,) of one image, as the out-of-distribution check reads them; None for a
        file without the ``features`` output."""
        return self._forward(image)[2]

    def _forward(self, image: np.ndarray) -> tuple[np.ndarray, float | None, np.ndarray | None, dict[str, float]]:
        start = time.perf_counter()
        grey = to_grey(image)
        x = normalize(preprocess(grey, self.preprocess_params), self.normalize)[None, None]
        mid = time.perf_counter()
        prob, logit, features = self._run(x)
        if self.flip:
            mirror, mirror_logit, _ = self._run(x[..., ::-1])
            prob = 0.5 * (prob + mirror[:, ::-1])
            logit = None if logit is None else 0.5 * (logit + mirror_logit)
        end = time.perf_counter()
        prob = resize_probabilities(prob, grey.shape)
        done = time.perf_counter()
        timings = {"preprocess_ms": 1000 * (mid - start + done - end), "model_ms": 1000 * (end - mid)}
        return prob, logit, features, timings

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, float | None, np.ndarray | None]:
        """Pixel probabilities (h, w), the presence logit and the features of one normalised image, by name."""
        values = self.session.run(self.output_names, {self.input: np.ascontiguousarray(x, np.float32)})
        got = dict(zip(self.output_names, values))
        logit = float(got[PRESENCE].ravel()[0]) if PRESENCE in got else None
        features = got[FEATURES][0] if FEATURES in got else None
        return 1.0 / (1.0 + np.exp(-got[OUTPUT][0, 0])), logit, features

    def segment(self, image: np.ndarray, pixel_spacing: Sequence[float] | None = None,
                threshold: float | None = None) -> Segmentation:
        """Segment one image. ``pixel_spacing``: (row, column) mm per pixel, for the area in mm²; ``threshold``
        replaces the stored pixel threshold for this call (the rest of the rule is kept). A frame out of
        distribution (:attr:`Segmentation.in_distribution`) gets no lesion and an empty mask."""
        problem = frame_problem(check_image(image), self.ood.min_side if self.ood else 1)
        if problem:
            return self.no_answer(image, problem)
        prob, logit, features, timings = self._forward(image)
        start = time.perf_counter()
        reason = NOT_CHECKED if self.ood is None or features is None else self.ood.reason(features, image)
        rule = self.postprocess if threshold is None else dataclasses.replace(self.postprocess, threshold=threshold)
        in_distribution = reason in ("", NOT_CHECKED)
        if self.presence is None:  # older files: the rule's gate on the highest probability decides
            mask = rule.apply(prob) if in_distribution else np.zeros(prob.shape, bool)
            result = describe(mask, prob, pixel_spacing)
        else:
            score = self.presence.probability(logit)
            present = in_distribution and score >= self.presence.threshold
            result = describe(self.mask(prob, present, rule), prob, pixel_spacing, present=present, score=score)
        result.in_distribution, result.ood_reason = in_distribution, reason
        result.timings = timings | {"postprocess_ms": 1000 * (time.perf_counter() - start)}
        return result

    def mask(self, prob: np.ndarray, present: bool, rule: PostProcess | None = None) -> np.ndarray:
        """The mask of an image whose image-level answer is ``present`` (:meth:`PostProcess.answer`, with the
        file's ``fill_empty``)."""
        fill_empty = self.presence is not None and self.presence.fill_empty
        return (rule or self.postprocess).answer(prob, present, fill_empty)

    @staticmethod
    def no_answer(image: np.ndarray, reason: str) -> Segmentation:
        """The answer for a frame that holds no scan: out of distribution, no lesion, zero probability."""
        shape = np.asarray(image).shape[:2]
        empty = np.zeros(shape, np.float32)
        result = describe(np.zeros(shape, bool), empty)
        result.in_distribution, result.ood_reason = False, reason
        result.timings = {"preprocess_ms": 0.0, "model_ms": 0.0, "postprocess_ms": 0.0}
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
        return Smoother(self.stream_rule, self.operating_point)

    def smoothed(self, result: Segmentation, smoother: Smoother, pixel_spacing: Sequence[float] | None = None,
                 threshold: float | None = None) -> Segmentation:
        """``result`` with ``smoother``'s decision: no mask where it says no lesion, and the rule's mask without
        its image-level gate where it says lesion against the frame's own answer. A frame out of distribution
        counts as no lesion and keeps its own (empty) answer."""
        if not result.in_distribution:
            smoother.update(False, 0.0)
            return result
        present = smoother.update(result.lesion_present, result.score)
        if present == result.lesion_present:
            return result
        rule = dataclasses.replace(self.postprocess, gate=0.0)
        if threshold is not None:
            rule = dataclasses.replace(rule, threshold=threshold)
        out = describe(self.mask(result.probability, present, rule), result.probability, pixel_spacing,
                       present=present, score=result.score)
        out.timings, out.ood_reason = result.timings, result.ood_reason
        return out


def describe(mask: np.ndarray, prob: np.ndarray, pixel_spacing: Sequence[float] | None = None,
             present: bool | None = None, score: float | None = None) -> Segmentation:
    """A :class:`Segmentation` of a final mask: score, area, bounding box and the largest lesion's contour.
    ``present`` is the image-level answer when the presence output or a stream's smoothed decision sets it
    (default: the mask has pixels); ``score`` the calibrated presence probability (default: the highest pixel
    probability)."""
    pixels = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    area = cv2.countNonZero(pixels) if pixels.size else 0
    bbox = contour = None
    if area:
        bbox = tuple(int(v) for v in cv2.boundingRect(pixels))
        x, y, width, height = bbox  # the contours of the box around the lesion pixels: a fraction of a large frame
        contours, _ = cv2.findContours(np.ascontiguousarray(pixels[y:y + height, x:x + width]),
                                       cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
        contour = max(contours, key=cv2.contourArea)[:, 0, :]
    area_mm2 = None if pixel_spacing is None else area * float(pixel_spacing[0]) * float(pixel_spacing[1])
    if score is None:
        score = float(prob.max()) if prob.size else 0.0
    return Segmentation(mask=mask, probability=prob, score=score,
                        lesion_present=area > 0 if present is None else present,
                        area_px=area, area_mm2=area_mm2, bbox=bbox, contour=contour)
