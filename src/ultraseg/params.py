"""Load ``params.yaml`` once into typed, validated dataclasses.

Every section of ``params.yaml`` has a dataclass here. Loading walks the YAML tree against the dataclass fields
(a key left out takes the dataclass default): an unknown key or a value of the wrong type raises
:class:`ParamsError` naming the dotted key, so
``dvc exp run -S train.lr=abc`` fails at once with ``train.lr: expected float, got 'abc'``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from ultraseg.data.augment import AugmentParams
from ultraseg.onnx_io import ExportParams
from ultraseg.prune import PruneParams
from ultraseg.quantize import QuantizeParams


class ParamsError(ValueError):
    """A params file that does not match the schema; the message names the dotted key."""


# ---------------------------------------------------------------------------------------------------- checks


def _positive(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        if not getattr(obj, name) > 0:
            raise ParamsError(f"{prefix}.{name}: expected a positive number, got {getattr(obj, name)!r}")


def _within(obj: Any, prefix: str, name: str, low: float, high: float) -> None:
    if not low <= getattr(obj, name) <= high:
        raise ParamsError(f"{prefix}.{name}: expected a value in [{low}, {high}], got {getattr(obj, name)!r}")


# ---------------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class FetchParams:
    source: str = "../shared/data/busi"
    """A directory (mirror or original ``Dataset_BUSI_with_GT`` layout), a ``.zip`` of either, or an http(s) URL."""
    sha256: str | None = None
    """Expected sha256 of a downloaded or zipped archive; ``null`` skips the check."""


@dataclass(frozen=True)
class GaussianParams:
    sigma: float = 1.0


@dataclass(frozen=True)
class MedianParams:
    window: int = 5


@dataclass(frozen=True)
class BilateralParams:
    diameter: int = 7
    sigma_color: float = 25.0
    sigma_space: float = 5.0


@dataclass(frozen=True)
class NlmParams:
    h: float = 10.0
    template_window: int = 7
    search_window: int = 21


@dataclass(frozen=True)
class LeeParams:
    window: int = 7


@dataclass(frozen=True)
class FrostParams:
    window: int = 7
    damping: float = 2.0


@dataclass(frozen=True)
class KuanParams:
    window: int = 7


@dataclass(frozen=True)
class SradParams:
    iterations: int = 20
    step: float = 0.05


@dataclass(frozen=True)
class FilterParams:
    """Each filter's own parameters; only the one named by ``preprocess.filter`` is applied."""

    gaussian: GaussianParams = field(default_factory=GaussianParams)
    median: MedianParams = field(default_factory=MedianParams)
    bilateral: BilateralParams = field(default_factory=BilateralParams)
    nlm: NlmParams = field(default_factory=NlmParams)
    lee: LeeParams = field(default_factory=LeeParams)
    frost: FrostParams = field(default_factory=FrostParams)
    kuan: KuanParams = field(default_factory=KuanParams)
    srad: SradParams = field(default_factory=SradParams)

    def validate(self, prefix: str) -> None:
        from ultraseg.data import filters  # the filters own their parameter checks

        probe = np.full((8, 8), 100.0, np.float32)
        for name in filters.FILTERS:
            try:
                filters.apply_filter(probe, name, **self.kwargs(name))
            except ValueError as err:
                raise ParamsError(f"{prefix}.{name}.{err}") from None

    def kwargs(self, name: str) -> dict[str, Any]:
        """Keyword arguments of filter ``name`` (empty for ``none``)."""
        return {} if name == "none" else dataclasses.asdict(getattr(self, name))


FilterName = Literal["none", "gaussian", "median", "bilateral", "nlm", "lee", "frost", "kuan", "srad"]


@dataclass(frozen=True)
class ClaheParams:
    enabled: bool = True
    clip: float = 2.0
    tiles: int = 8

    def validate(self, prefix: str) -> None:
        _positive(self, prefix, "clip", "tiles")


@dataclass(frozen=True)
class PreprocessParams:
    size: int = 128
    """Side of the square network input, in pixels (images are resized, not cropped)."""
    filter: FilterName = "none"
    filters: FilterParams = field(default_factory=FilterParams)
    clahe: ClaheParams = field(default_factory=ClaheParams)
    normalize: Literal["unit", "zscore"] = "zscore"
    """``unit``: x/255; ``zscore``: per image (x - mean) / std, robust to another scanner's gain."""
    quality_sample: int = 40
    """Images used to compare every filter's speckle suppression and edge preservation."""

    def validate(self, prefix: str) -> None:
        _positive(self, prefix, "quality_sample")
        if self.size < 16 or self.size % 16:
            raise ParamsError(f"{prefix}.size: expected a multiple of 16 (four 2x down-samplings), got {self.size}")


@dataclass(frozen=True)
class DuplicateParams:
    max_features: int = 150
    """SIFT keypoints per image used to match near-duplicate scans."""
    min_matches: int = 10
    """RANSAC inliers of a similarity transform needed to call two images the same view."""
    min_ncc: float = 0.35
    """Band-pass normalised cross-correlation of the aligned tissue needed to confirm a match."""
    min_overlap: float = 0.2
    """Shared tissue, as a fraction of the smaller image, needed to confirm a match."""

    def validate(self, prefix: str) -> None:
        _positive(self, prefix, "max_features", "min_matches")
        _within(self, prefix, "min_ncc", -1.0, 1.0)
        _within(self, prefix, "min_overlap", 0.0, 1.0)


@dataclass(frozen=True)
class SplitFractions:
    train: float = 0.7
    val: float = 0.1
    test: float = 0.2

    def validate(self, prefix: str) -> None:
        for name in ("train", "val", "test"):
            _within(self, prefix, name, 0.0, 1.0)
        if min(self.train, self.val, self.test) <= 0 or abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ParamsError(f"{prefix}: train, val and test must be positive fractions summing to 1")


@dataclass(frozen=True)
class SplitParams:
    seed: int = 42
    fractions: SplitFractions = field(default_factory=SplitFractions)
    duplicates: DuplicateParams = field(default_factory=DuplicateParams)


@dataclass(frozen=True)
class ModelParams:
    """Arguments of :func:`ultraseg.models.registry.build_model`; ``null`` keeps the variant's own default."""

    name: Literal["unet", "attention_unet", "res_unet", "unet_pp"] = "unet"
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    """Channels per level, stem first, bottleneck last; the classic U-Net is [64, 128, 256, 512, 1024]."""
    block: Literal["double", "residual", "separable"] | None = None
    attention: bool | None = None
    norm: Literal["batch", "group", "instance"] = "batch"
    act: Literal["relu", "leaky_relu", "gelu", "silu"] = "relu"
    down: Literal["max", "avg", "conv"] = "max"
    up: Literal["transpose", "bilinear", "nearest"] = "transpose"
    dropout: float = 0.0
    stem_stride: int = 1
    """Work at 1/stem_stride of the input's resolution: a patchify stem and a pixel-shuffle head; 1 = classic."""

    def validate(self, prefix: str) -> None:
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ParamsError(f"{prefix}.widths: expected at least two positive channel counts, got {self.widths}")
        _within(self, prefix, "dropout", 0.0, 0.9)
        _within(self, prefix, "stem_stride", 1, 16)

    def config(self) -> dict[str, Any]:
        """The ``build_model`` config: a plain dict, without the ``null`` (variant-default) entries."""
        return {k: v for k, v in to_dict(self).items() if v is not None}


@dataclass(frozen=True)
class LossParams:
    """Term weights (0 leaves a term out) and options, as :func:`ultraseg.losses.build_loss` takes them."""

    bce: float = 1.0
    dice: float = 1.0
    focal: float = 0.0
    tversky: float = 0.0
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7

    def validate(self, prefix: str) -> None:
        for name in ("bce", "dice", "focal", "tversky"):
            _within(self, prefix, name, 0.0, 100.0)
        if self.bce + self.dice + self.focal + self.tversky <= 0:
            raise ParamsError(f"{prefix}: at least one of bce, dice, focal, tversky needs a positive weight")


@dataclass(frozen=True)
class TrainParams:
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: CUDA when present, else the CPU."""
    threads: int = 0
    """CPU threads for PyTorch; 0 uses every core."""
    workers: int = 0
    """DataLoader worker processes; augmentation costs well under 1% of a CPU step, so 0 is fastest on 2 cores."""
    epochs: int = 40
    batch_size: int = 16
    lr: float = 0.003
    weight_decay: float = 0.0001
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    warmup_epochs: int = 2
    patience: int = 20
    """Early stopping: epochs without a better val Dice before training stops; 0 never stops early."""
    grad_clip: float = 1.0
    """Largest gradient norm; 0 disables clipping."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights (and BatchNorm statistics), updated every step;
    validation and the saved model use the average. 0 = off."""
    threshold: float = 0.5
    """Probability above which a pixel is lesion, for val Dice/IoU."""
    amp: bool = True
    """Mixed precision; used on CUDA only."""
    model: ModelParams = field(default_factory=ModelParams)
    loss: LossParams = field(default_factory=LossParams)
    augment: AugmentParams = field(default_factory=AugmentParams)

    def validate(self, prefix: str) -> None:
        _positive(self, prefix, "epochs", "batch_size", "lr")
        for name in ("threads", "workers", "warmup_epochs", "patience", "weight_decay", "grad_clip"):
            _within(self, prefix, name, 0, float("inf"))
        _within(self, prefix, "threshold", 0.0, 1.0)
        _within(self, prefix, "ema", 0.0, 0.9999)  # a decay of 1 would never move the average from the start


def _default_student() -> ModelParams:
    # at a quarter of the input's resolution, so that after pruning to 1/20 of the teacher's MACs every layer keeps
    # the 16+ channels ONNX Runtime's fast int8 convolution needs; plain convolutions and nearest up-sampling,
    # while int8 does not speed up depthwise convolutions, ConvTranspose or bilinear Resize on this CPU
    return ModelParams(widths=(32, 64, 96), up="nearest", stem_stride=4)


@dataclass(frozen=True)
class DistillParams:
    """Knowledge distillation into a small student; batch size, augmentation, task loss, schedule and seed are
    those of ``train``."""

    student: ModelParams = field(default_factory=_default_student)
    temperature: float = 2.0
    """Softens teacher and student logits before they are compared (Hinton et al. 2015)."""
    kd_weight: float = 1.0
    """Weight of the distillation term; 0 trains the student on the masks alone."""
    task_weight: float = 1.0
    """Weight of the task loss (``train.loss``) on the masks."""
    teacher_logits: Literal["cached", "live"] = "cached"
    """``cached``: the teacher runs once on the unaugmented train images and its logits follow each sample's
    geometric augmentation; ``live``: it runs on every augmented batch (see :mod:`ultraseg.distill`)."""
    epochs: int = 80
    lr: float = 0.003
    ema: float = 0.0
    """As ``train.ema``, for the student and its fine-tuning after each pruning step."""
    baseline: bool = True
    """Also train the same student without distillation (same budget and seed) to measure what it gains."""
    keep: Literal["distilled", "best"] = "best"
    """The student handed to pruning: the distilled one, or whichever of it and the baseline scores higher on val
    (the baseline costs nothing extra: it is trained anyway to measure the gain)."""

    def validate(self, prefix: str) -> None:
        _positive(self, prefix, "temperature", "epochs", "lr")
        for name in ("kd_weight", "task_weight"):
            _within(self, prefix, name, 0.0, 100.0)
        if self.kd_weight + self.task_weight <= 0:
            raise ParamsError(f"{prefix}: kd_weight and task_weight cannot both be 0")
        _within(self, prefix, "ema", 0.0, 0.9999)
        if self.keep == "best" and not self.baseline:
            raise ParamsError(f"{prefix}.keep: 'best' compares with the baseline; set {prefix}.baseline: true "
                              "or keep: distilled")

    def budget(self, train: TrainParams) -> TrainParams:
        """The training settings of the student: ``train``'s, with this section's model, epochs, lr and ema."""
        return dataclasses.replace(train, model=self.student, epochs=self.epochs, lr=self.lr, ema=self.ema)


@dataclass(frozen=True)
class EvaluateParams:
    """Test-split scoring of every model variant (the split is never used to choose anything)."""

    threshold: float | Literal["val"] = "val"
    """``val``: each variant's probability threshold of best lesion-mean Dice on the val split; or a fixed value."""
    threshold_step: float = 0.05
    """Spacing of the thresholds tried on val, from ``threshold_step`` to ``1 - threshold_step``."""
    bootstrap: int = 1000
    """Resamples of the lesion images for the 95% confidence interval of the headline Dice."""
    seed: int = 0
    """Seed of the bootstrap."""

    def validate(self, prefix: str) -> None:
        if self.threshold != "val" and not 0.0 < self.threshold < 1.0:
            raise ParamsError(f"{prefix}.threshold: expected 'val' or a probability in (0, 1), got {self.threshold!r}")
        _within(self, prefix, "threshold_step", 0.001, 0.5)
        _positive(self, prefix, "bootstrap")


@dataclass(frozen=True)
class BenchmarkParams:
    """Latency, throughput and memory of every variant, measured on this machine's CPU."""

    size: int | None = None
    """Input side at deployment (px); ``null`` uses ``preprocess.size``."""
    threads: tuple[int, ...] = (1, 0)
    """Thread counts to measure with (1 is required); 1 simulates a small edge device, 0 means every core."""
    warmup: int = 10
    """Untimed calls before timing."""
    runs: int = 50
    """Timed batch-1 calls; p50 and p95 are over these."""
    batch: int = 8
    """Batch size of the throughput measurement."""
    batch_runs: int = 10
    """Timed calls of the throughput measurement."""
    max_disturbance: float = 0.1
    """A measurement is repeated when other processes used more than this fraction of the CPU time available to
    it (all cores' time over its wall time) while it ran."""
    retries: int = 3
    """Repeats of a disturbed measurement; the least disturbed one is kept and its disturbance reported."""

    def validate(self, prefix: str) -> None:
        if self.size is not None and (self.size < 16 or self.size % 16):
            raise ParamsError(f"{prefix}.size: expected null or a multiple of 16 (>= 16), got {self.size!r}")
        if 1 not in self.threads or any(t < 0 for t in self.threads):
            raise ParamsError(f"{prefix}.threads: expected thread counts >= 0 including 1 (the edge-device setting "
                              f"the report and trade-off plot use), got {list(self.threads)}")
        _positive(self, prefix, "runs", "batch", "batch_runs")
        for name in ("warmup", "retries"):
            _within(self, prefix, name, 0, float("inf"))
        _within(self, prefix, "max_disturbance", 0.0, 1.0)


@dataclass(frozen=True)
class Params:
    fetch: FetchParams = field(default_factory=FetchParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    split: SplitParams = field(default_factory=SplitParams)
    train: TrainParams = field(default_factory=TrainParams)
    distill: DistillParams = field(default_factory=DistillParams)
    prune: PruneParams = field(default_factory=PruneParams)
    export: ExportParams = field(default_factory=ExportParams)
    quantize: QuantizeParams = field(default_factory=QuantizeParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    benchmark: BenchmarkParams = field(default_factory=BenchmarkParams)


# ---------------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float, lists to tuples)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, option, key)
            except ParamsError as err:
                errors.append(str(err))
        expected = " or ".join(_type_name(a) for a in typing.get_args(tp))
        raise ParamsError(f"{key}: expected {expected}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ParamsError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp)
        return {k: _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected float, got {value!r}")
        return float(value)
    if tp is int or tp is bool or tp is str:
        if type(value) is not tp:
            raise ParamsError(f"{key}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {key}")  # a bug in this module, not in the params file


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(f"unknown key {where}{unknown[0]}; valid keys here: {', '.join(names)}")
    kwargs = {}
    for name in names:
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate(prefix)
        except ParamsError:
            raise
        except ValueError as err:  # validators outside this module raise plain ValueError
            raise ParamsError(str(err)) from None
    return obj


def from_dict(data: dict[str, Any] | None, cls: type = Params) -> Any:
    """Build ``cls`` from a nested dict; keys left out take the dataclass defaults."""
    return _build(cls, data or {}, "")


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return from_dict(data)


def to_dict(obj: Any) -> dict[str, Any]:
    """A params section as plain JSON-able data (for checkpoints and ONNX metadata)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def digest(obj: Any) -> str:
    """A short stable hash of a params section."""
    return hashlib.sha256(json.dumps(to_dict(obj), sort_keys=True).encode()).hexdigest()[:12]
