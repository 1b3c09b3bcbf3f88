"""Load ``params.yaml`` once into typed, validated dataclasses.

Every section of ``params.yaml`` has a dataclass here, and this module imports nothing heavy and nothing else from
``ultraseg``: a stage that only copies files, the report, and the torch-free runtime all read their params without
loading PyTorch or ONNX Runtime.

Loading walks the YAML tree against the dataclass fields: a key the schema does not know, a key the file leaves out,
or a value of the wrong type raises :class:`ParamsError` naming the dotted key, so
``dvc exp run -S train.lr=abc`` fails at once with ``train.lr: expected float, got 'abc'``. Every section is then
checked the same way: :meth:`Section.validate` re-checks each field against its annotation (so a dataclass built in
code gets the same checks as one read from a file) and then runs the section's own range rules, ``check``, which
report through :func:`_require`.

No field has a default: ``params.yaml`` is the one source of values, so a section can only be built from a
complete mapping (the file, a model file's stored section, or the file with some keys changed), and a value in code
can never drift from the one that ships.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml


class ParamsError(ValueError):
    """A params file that does not match the schema; the message names the dotted key."""


# ---------------------------------------------------------------------------------------------------- checks


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _require(obj: Any, prefix: str, name: str, ok: Callable[[Any], bool], expected: str) -> None:
    """The one way a rule reports: ``prefix.name: expected <expected>, got <value>`` unless ``ok(value)``.

    Rules are written as comparisons that NaN fails."""
    value = getattr(obj, name)
    if not ok(value):
        raise ParamsError(f"{_join(prefix, name)}: expected {expected}, got {value!r}")


def _positive(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        _require(obj, prefix, name, lambda v: 0 < v < math.inf, "a positive number")


def _within(obj: Any, prefix: str, name: str, low: float, high: float, *, open_high: bool = False) -> None:
    if open_high:
        _require(obj, prefix, name, lambda v: low <= v < high, f"a value in [{low}, {high})")
    else:
        _require(obj, prefix, name, lambda v: low <= v <= high, f"a value in [{low}, {high}]")


def _odd_window(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        _require(obj, prefix, name, lambda v: v >= 3 and v % 2 == 1, "an odd window >= 3")


class Section:
    """Base of every params dataclass: one validation for all of them."""

    def validate(self, prefix: str = "") -> None:
        """Check every field against its annotation (nested sections recursively), then the section's rules."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Section):
                value.validate(_join(prefix, f.name))
            else:
                _convert(value, hints[f.name], _join(prefix, f.name))
        self.check(prefix)

    def check(self, prefix: str) -> None:
        """The section's range and cross-field rules (none by default)."""
# ---------------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class FetchParams(Section):
    source: str
    """A directory (mirror or original ``Dataset_BUSI_with_GT`` layout), a ``.zip`` of either, or an http(s) URL."""
    sha256: str | None
    """Expected sha256 of a downloaded or zipped archive; ``null`` skips the check."""
    extra_sources: tuple[str, ...]
    """More labelled data, each ``[name=]path``: a folder or CSV in a layout :mod:`ultraseg.data.labelled` reads.
    Their ids become ``<name>/<id>``; ``source`` stays a single path because DVC tracks it as a dependency."""


@dataclass(frozen=True)
class GaussianParams(Section):
    sigma: float

    def check(self, prefix: str) -> None:
        _positive(self, prefix, "sigma")


@dataclass(frozen=True)
class MedianParams(Section):
    window: int

    def check(self, prefix: str) -> None:
        _odd_window(self, prefix, "window")


@dataclass(frozen=True)
class BilateralParams(Section):
    diameter: int
    sigma_color: float
    sigma_space: float

    def check(self, prefix: str) -> None:
        _positive(self, prefix, "diameter", "sigma_color", "sigma_space")


@dataclass(frozen=True)
class NlmParams(Section):
    h: float
    template_window: int
    search_window: int

    def check(self, prefix: str) -> None:
        _positive(self, prefix, "h")
        _odd_window(self, prefix, "template_window", "search_window")


@dataclass(frozen=True)
class LeeParams(Section):
    window: int

    def check(self, prefix: str) -> None:
        _odd_window(self, prefix, "window")


@dataclass(frozen=True)
class FrostParams(Section):
    window: int
    damping: float

    def check(self, prefix: str) -> None:
        _odd_window(self, prefix, "window")
        _positive(self, prefix, "damping")


@dataclass(frozen=True)
class KuanParams(Section):
    window: int

    def check(self, prefix: str) -> None:
        _odd_window(self, prefix, "window")


@dataclass(frozen=True)
class SradParams(Section):
    iterations: int
    step: float
    """Diffusion step; the explicit scheme is stable up to 1."""

    def check(self, prefix: str) -> None:
        _within(self, prefix, "iterations", 0, math.inf, open_high=True)
        _require(self, prefix, "step", lambda v: 0 < v <= 1, "a value in (0, 1]")


FilterName = Literal["none", "gaussian", "median", "bilateral", "nlm", "lee", "frost", "kuan", "srad"]


@dataclass(frozen=True)
class FilterParams(Section):
    """Each filter's own parameters; only the one named by ``preprocess.filter`` is applied."""

    gaussian: GaussianParams
    median: MedianParams
    bilateral: BilateralParams
    nlm: NlmParams
    lee: LeeParams
    frost: FrostParams
    kuan: KuanParams
    srad: SradParams

    def kwargs(self, name: str) -> dict[str, Any]:
        """Keyword arguments of filter ``name`` (empty for ``none``)."""
        return {} if name == "none" else dataclasses.asdict(getattr(self, name))


@dataclass(frozen=True)
class ClaheParams(Section):
    enabled: bool
    clip: float
    tiles: int

    def check(self, prefix: str) -> None:
        _positive(self, prefix, "clip", "tiles")


@dataclass(frozen=True)
class PreprocessParams(Section):
    size: int
    """Side of the square network input, in pixels (images are resized, not cropped)."""
    filter: FilterName
    filters: FilterParams
    clahe: ClaheParams
    normalize: Literal["unit", "zscore"]
    """``unit``: x/255; ``zscore``: per image (x - mean) / std, robust to another scanner's gain."""
    quality_sample: int
    """Images used to compare every filter's speckle suppression and edge preservation."""

    def check(self, prefix: str) -> None:
        _positive(self, prefix, "quality_sample")
        _require(self, prefix, "size", lambda v: v >= 16 and v % 16 == 0,
                 "a multiple of 16 (four 2x down-samplings)")


@dataclass(frozen=True)
class DuplicateParams(Section):
    max_features: int
    """SIFT keypoints per image used to match near-duplicate scans."""
    min_matches: int
    """RANSAC inliers of a similarity transform needed to call two images the same view."""
    min_ncc: float
    """Band-pass normalised cross-correlation of the aligned tissue needed to confirm a match."""
    min_overlap: float
    """Shared tissue, as a fraction of the smaller image, needed to confirm a match."""

    def check(self, prefix: str) -> None:
        _positive(self, prefix, "max_features", "min_matches")
        _within(self, prefix, "min_ncc", -1.0, 1.0)
        _within(self, prefix, "min_overlap", 0.0, 1.0)


@dataclass(frozen=True)
class SplitFractions(Section):
    train: float
    val: float
    test: float

    def check(self, prefix: str) -> None:
        for name in ("train", "val", "test"):
            _within(self, prefix, name, 0.0, 1.0)
        if min(self.train, self.val, self.test) <= 0 or abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ParamsError(f"{prefix}: train, val and test must be positive fractions summing to 1")


@dataclass(frozen=True)
class SplitParams(Section):
    seed: int
    fractions: SplitFractions
    duplicates: DuplicateParams
    folds: int
    """Grouped cross-validation folds over train + val (duplicate groups never split, test untouched)."""
    fold: int | None
    """null: the fixed train/val split; k in [0, folds): fold k is val and the other folds train."""

    def check(self, prefix: str) -> None:
        _within(self, prefix, "folds", 2, 20)
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ParamsError(f"{prefix}.fold: expected null or an integer in [0, {self.folds}), got {self.fold}")


@dataclass(frozen=True)
class ModelParams(Section):
    """Arguments of :func:`ultraseg.models.registry.build_model`; ``null`` keeps the variant's own default."""

    name: Literal["unet", "attention_unet", "res_unet", "unet_pp"]
    widths: tuple[int, ...]
    """Channels per level, stem first, bottleneck last; the classic U-Net is [64, 128, 256, 512, 1024]."""
    block: Literal["double", "residual", "separable"] | None
    attention: bool | None
    norm: Literal["batch", "group", "instance"]
    act: Literal["relu", "leaky_relu", "gelu", "silu"]
    down: Literal["max", "avg", "conv"]
    up: Literal["transpose", "bilinear", "nearest"]
    dropout: float
    stem_stride: int
    """Work at 1/stem_stride of the input's resolution: a patchify stem and a pixel-shuffle head; 1 = classic."""
    presence: bool
    """A presence head on the deepest features: one logit per image for "is there a lesion at all"."""
    presence_grad: float
    """Share of the presence term's gradient that reaches the layers the mask also uses: 1 trains them for both
    tasks, 0 leaves them to the masks alone (the head still learns in full)."""

    def check(self, prefix: str) -> None:
        _require(self, prefix, "widths", lambda v: len(v) >= 2 and min(v) >= 1,
                 "at least two positive channel counts")
        _within(self, prefix, "dropout", 0.0, 0.9)
        _within(self, prefix, "stem_stride", 1, 16)
        _within(self, prefix, "presence_grad", 0.0, 1.0)

    def config(self) -> dict[str, Any]:
        """The ``build_model`` config: a plain dict, without the ``null`` (variant-default) entries."""
        return {k: v for k, v in to_dict(self).items() if v is not None}


@dataclass(frozen=True)
class LossParams(Section):
    """Term weights (0 leaves a term out) and options, as :func:`ultraseg.losses.build_loss` takes them."""

    bce: float
    dice: float
    focal: float
    tversky: float
    empty: float
    focal_gamma: float
    tversky_alpha: float
    tversky_beta: float
    empty_fraction: float
    presence: float
    """Weight of the binary cross-entropy of the presence logit against "the mask has a lesion pixel" (needs a
    model with a presence head; 0 leaves the head untrained)."""

    def check(self, prefix: str) -> None:
        for name in ("bce", "dice", "focal", "tversky", "empty", "presence"):
            _within(self, prefix, name, 0.0, 100.0)
        _require(self, prefix, "empty_fraction", lambda v: 0 < v <= 1, "a value in (0, 1]")
        if self.bce + self.dice + self.focal + self.tversky <= 0:
            raise ParamsError(f"{prefix}: at least one of bce, dice, focal, tversky needs a positive weight")


@dataclass(frozen=True)
class AugmentParams(Section):
    """Which augmentations run and how strongly; a probability of 0 or a magnitude of 0 switches a part off."""

    enabled: bool
    """Master switch; ``False`` returns copies of the inputs."""
    hflip: float
    """Probability of a horizontal flip."""
    rotate: float
    """Largest rotation in degrees, drawn uniformly in [-rotate, rotate]."""
    translate: float
    """Largest shift as a fraction of the image size, drawn uniformly in [-translate, translate] per axis."""
    scale: float
    """Isotropic scale factor drawn uniformly in [1 - scale, 1 + scale]."""
    affine_p: float
    """Probability of the affine warp (rotate, translate and scale in one ``cv2.warpAffine``)."""
    brightness: float
    """Largest additive shift, in units of the image's standard deviation."""
    contrast: float
    """Contrast factor about the image mean, drawn uniformly in [1 - contrast, 1 + contrast]."""
    gamma: float
    """Gamma drawn uniformly in [1 - gamma, 1 + gamma], applied to the image rescaled to [0, 1] and back."""
    intensity_p: float
    """Probability of the brightness/contrast/gamma change."""
    speckle: float
    """Coefficient of variation of the multiplicative speckle field; 0 disables."""
    speckle_p: float
    """Probability of speckle noise."""
    shadow_p: float
    """Probability of an acoustic shadow."""
    shadow_strength: float
    """Largest fraction of intensity removed inside a shadow."""
    elastic_p: float
    """Probability of an elastic deformation."""
    elastic_alpha: float
    """Largest displacement of the elastic field, in pixels."""
    elastic_sigma: float
    """Sigma, in pixels, of the Gaussian that smooths the elastic field."""
    aspect: float
    """Width stretch drawn uniformly in [1 - aspect, 1 + aspect] (height unchanged), with the affine warp: other
    scanners' frames have other aspect ratios."""
    speckle_grain: float
    """Largest speckle grain sigma in pixels, drawn uniformly in [1, speckle_grain]: other probes' speckle is
    coarser."""
    sector_p: float
    """Probability of a fan-shaped field of view (convex probe): black outside a fan from above the top centre."""
    annotations_p: float
    """Probability of burned-in calipers and text, drawn on any image, normals included, so that marks stop
    meaning "lesion here"."""
    annotations: int
    """Largest number of caliper sets drawn when annotations fire."""

    def check(self, prefix: str) -> None:
        for name in _AUGMENT_RANGES:
            _augment_range(self, prefix, name)
        _positive(self, prefix, "elastic_sigma", "annotations")


# A scale, contrast or gamma range of 1 could draw a zero factor that erases the image.
_AUGMENT_RANGES: dict[str, tuple[float, float, bool]] = {
    **dict.fromkeys(("hflip", "translate", "affine_p", "intensity_p", "speckle_p", "shadow_p", "shadow_strength",
                     "elastic_p", "sector_p", "annotations_p"), (0.0, 1.0, False)),
    **dict.fromkeys(("scale", "contrast", "gamma", "aspect"), (0.0, 1.0, True)),
    **dict.fromkeys(("brightness", "speckle", "elastic_alpha"), (0.0, math.inf, True)),
    "rotate": (0.0, 180.0, False),
    "speckle_grain": (1.0, math.inf, True),
}
"""Each augmentation setting's range as (low, high, open_high): one rule for ``train.augment`` and the student's."""


def _augment_range(obj: Any, prefix: str, name: str) -> None:
    low, high, open_high = _AUGMENT_RANGES[name]
    _within(obj, prefix, name, low, high, open_high=open_high)


@dataclass(frozen=True)
class StudentAugmentParams(Section):
    """The student's own geometric ranges, each ``null`` for ``train.augment``'s: a student that sees a quarter of
    the resolution loses small lesions first when another scanner's depth or aspect shrinks them, so it may need a
    wider zoom range than the teacher, whose distilled logits follow every warp (see :mod:`ultraseg.distillation`)."""

    scale: float | None
    """As ``train.augment.scale``."""
    aspect: float | None
    """As ``train.augment.aspect``."""
    translate: float | None
    """As ``train.augment.translate``."""

    def check(self, prefix: str) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is not None:
                _augment_range(self, prefix, f.name)

    def apply(self, augment: AugmentParams) -> AugmentParams:
        """``augment`` with this section's ranges where they are set."""
        given = {name: value for name, value in dataclasses.asdict(self).items() if value is not None}
        return dataclasses.replace(augment, **given)


@dataclass(frozen=True)
class DistributedParams(Section):
    """Training on several processes with PyTorch DDP (:mod:`ultraseg.distributed`); each process takes an equal
    share of every global batch of ``train.batch_size``."""

    nproc: int
    """Processes per node; more than 1 (or ``nnodes`` > 1) makes the stage start itself again under torchrun."""
    nnodes: int
    """Nodes (machines) taking part; each runs the same stage with the same params."""
    rdzv_endpoint: str
    """``host:port`` where the nodes meet (torchrun's c10d rendezvous); empty on one node: a free local port."""
    rdzv_id: str
    """Name of the job at the rendezvous, the same on every node."""
    backend: Literal["auto", "gloo", "nccl"]
    """``auto``: NCCL on CUDA, gloo on the CPU."""
    sync_bn: bool
    """BatchNorm statistics over the global batch instead of each process's share."""

    def check(self, prefix: str) -> None:
        _positive(self, prefix, "nproc", "nnodes")
        if self.nnodes > 1:
            _require(self, prefix, "rdzv_endpoint", lambda v: re.fullmatch(r"\S+:\d+", v) is not None,
                     "host:port where the nodes meet (nnodes > 1)")

    @property
    def world(self) -> int:
        """Processes in all: ``nproc * nnodes``."""
        return self.nproc * self.nnodes


@dataclass(frozen=True)
class TrainParams(Section):
    seed: int
    members: int
    """Teachers trained, at seeds ``seed``, ``seed + 1``, ...; above 1 the teacher is their ensemble (the mean of
    their logits and presence logits, :class:`ultraseg.ensemble.Ensemble`), which distillation, pruning, export and
    the accurate profile use as they use one network. The student's own training ignores it."""
    device: Literal["auto", "cpu", "cuda"]
    """``auto``: CUDA when present, else the CPU."""
    threads: int
    """CPU threads for PyTorch; 0 uses every core."""
    workers: int
    """DataLoader worker processes; augmentation is cheap next to a training step, so 0 suits a small CPU."""
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    scheduler: Literal["cosine", "plateau", "none"]
    warmup_epochs: int
    patience: int
    """Early stopping: epochs without a better val Dice before training stops; 0 never stops early."""
    grad_clip: float
    """Largest gradient norm; 0 disables clipping."""
    ema: float
    """Decay of an exponential moving average of the weights (and BatchNorm statistics), updated every step;
    validation and the saved model use the average. 0 = off."""
    threshold: float
    """Probability above which a pixel is lesion, for val Dice/IoU."""
    model: ModelParams
    loss: LossParams
    augment: AugmentParams
    distributed: DistributedParams
    """Several training processes (DDP); distill and prune-finetune train the same way."""
    precision: Literal["auto", "fp32", "bf16"]
    """Training arithmetic (:mod:`ultraseg.precision`): ``auto`` uses bf16 where the CPU multiplies it natively
    (AVX512-BF16 or AMX) and mixed precision on CUDA, else fp32; ``bf16`` is refused where the hardware lacks it.
    Distill and prune-finetune train the same way."""

    def check(self, prefix: str) -> None:
        _positive(self, prefix, "epochs", "batch_size", "lr", "members")
        world = self.distributed.world
        _require(self, prefix, "batch_size", lambda v: v % world == 0,
                 f"a multiple of the {world} training processes ({prefix}.distributed: nproc x nnodes), "
                 "which share each batch equally")
        for name in ("threads", "workers", "warmup_epochs", "patience", "weight_decay", "grad_clip"):
            _within(self, prefix, name, 0, math.inf)
        _within(self, prefix, "threshold", 0.0, 1.0)
        _within(self, prefix, "ema", 0.0, 0.9999)  # a decay of 1 would never move the average from the start


@dataclass(frozen=True)
class DistillParams(Section):
    """Knowledge distillation into a small student; batch size, augmentation (but for ``augment``'s geometric
    ranges), task loss, schedule and seed are those of ``train``."""

    student: ModelParams
    augment: StudentAugmentParams
    """The student's zoom, stretch and shift ranges where they differ from ``train.augment``'s."""
    temperature: float
    """Softens teacher and student logits before they are compared (Hinton et al. 2015)."""
    kd_weight: float
    """Weight of the distillation term; 0 trains the student on the masks alone."""
    presence_weight: float
    """Weight of the distillation of the teacher's presence logit (softened by ``temperature`` as the masks' are);
    0 = the student's presence head learns from the masks alone (``train.loss.presence``)."""
    task_weight: float
    """Weight of the task loss (``train.loss``) on the masks."""
    empty_weight: float | None
    """The student's weight of the task loss's ``empty`` term (normal scans' highest logits), in distillation and
    pruning's fine-tuning; null = ``train.loss.empty``. The student is what the deployment gate reads, and the
    term costs the teacher lesion Dice."""
    normal_target: Literal["teacher", "background"]
    """What the student is distilled towards on normal scans (empty masks): the teacher's logits, or those clipped
    to each scan's median logit, so that the teacher's false positives there are not taught."""
    teacher_logits: Literal["cached", "live"]
    """``cached``: the teacher runs once on the unaugmented train images and its logits follow each sample's
    geometric augmentation; ``live``: it runs on every augmented batch (see :mod:`ultraseg.distillation`)."""
    epochs: int
    lr: float
    ema: float
    """As ``train.ema``, for the student and its fine-tuning after each pruning step."""
    baseline: bool
    """Also train the same student without distillation (same budget and seed) to measure what it gains."""
    keep: Literal["distilled", "best"]
    """The student handed to pruning: the distilled one, or whichever of it and the baseline scores higher on val
    (the baseline costs nothing extra: it is trained anyway to measure the gain)."""

    def check(self, prefix: str) -> None:
        _positive(self, prefix, "temperature", "epochs", "lr")
        for name in ("kd_weight", "task_weight", "presence_weight"):
            _within(self, prefix, name, 0.0, 100.0)
        if self.empty_weight is not None:
            _within(self, prefix, "empty_weight", 0.0, 100.0)
        if self.kd_weight + self.task_weight <= 0:
            raise ParamsError(f"{prefix}: kd_weight and task_weight cannot both be 0")
        _within(self, prefix, "ema", 0.0, 0.9999)
        if self.keep == "best" and not self.baseline:
            raise ParamsError(f"{prefix}.keep: 'best' compares with the baseline; set {prefix}.baseline: true "
                              "or keep: distilled")

    def task_loss(self, train: TrainParams) -> dict[str, Any]:
        """The student's task loss config: ``train.loss``, with ``empty_weight`` where set."""
        loss = to_dict(train.loss)
        return loss if self.empty_weight is None else {**loss, "empty": self.empty_weight}

    def budget(self, train: TrainParams) -> TrainParams:
        """The training settings of the student: ``train``'s, with this section's model, augmentation ranges, epochs,
        lr and ema."""
        return dataclasses.replace(train, model=self.student, augment=self.augment.apply(train.augment),
                                   epochs=self.epochs, lr=self.lr, ema=self.ema)


@dataclass(frozen=True)
class PruneParams(Section):
    """How far and how to prune; the prune-finetune stage reads ``finetune_epochs``."""

    ratio: float
    """Fraction of the channels removed from every prunable layer by the end, in [0, 0.95]."""
    steps: int
    """Pruning steps reaching ``ratio`` linearly, each followed by fine-tuning."""
    importance: Literal["l1", "l2", "bn_scale", "taylor"]
    """Channel ranking: ``l1``/``l2`` weight norms, ``bn_scale`` norm-layer scales, ``taylor`` |weight x gradient|.
    Weight norms mean little when a BatchNorm follows every convolution (it undoes the weights' scale)."""
    round_to: int
    """Channel counts are rounded down to multiples of this (SIMD and int8 kernels like multiples of 4 or 8)."""
    finetune_epochs: int
    """Epochs of fine-tuning after each pruning step. The last step's network needs a long one: val Dice keeps
    climbing until the last third of a round's cosine schedule."""
    finetune_lr: float
    """Peak learning rate of each fine-tuning round (cosine, no warm-up). As high as training's: a step removes whole
    feature detectors, which a low rate regrows too slowly."""
    global_pruning: bool
    """Rank channels across all layers (widths then differ per layer) instead of ``ratio`` in every layer."""
    calibration_batches: int
    """Batches of training images on which the BatchNorm statistics are measured again after every pruning step
    (see :func:`ultraseg.pruning.recalibrate_norms`); 0 keeps the old statistics."""

    def check(self, prefix: str) -> None:
        _within(self, prefix, "ratio", 0.0, 0.95)
        _positive(self, prefix, "steps", "round_to", "finetune_lr")
        _within(self, prefix, "finetune_epochs", 0, math.inf, open_high=True)
        _within(self, prefix, "calibration_batches", 0, math.inf, open_high=True)


OPSETS = {"dynamo": (18, 23), "torchscript": (17, 20)}
"""Default-domain opsets each exporter writes (inclusive): dynamo has no translations below 18, the TorchScript
exporter none above 20."""


@dataclass(frozen=True)
class ExportParams(Section):
    opset: int
    """ONNX default-domain opset of the exported graph."""
    parity_height: int
    parity_width: int
    """Size of the parity-check input: odd, and different from the training size, so a graph that froze the
    export size or mishandles odd sizes fails."""
    rtol: float
    atol: float
    """Parity passes when every logit satisfies ``|onnx - torch| <= atol + rtol * |torch|`` (numpy.allclose)."""
    exporter: Literal["dynamo", "torchscript"]

    def check(self, prefix: str) -> None:
        low, high = OPSETS[self.exporter]
        _require(self, prefix, "opset", lambda v: low <= v <= high,
                 f"an opset the {self.exporter} exporter writes ({low}-{high})")
        _positive(self, prefix, "parity_height", "parity_width")
        for name in ("rtol", "atol"):
            _within(self, prefix, name, 0.0, math.inf, open_high=True)
        if self.rtol == 0 and self.atol == 0:
            raise ParamsError(f"{_join(prefix, 'atol')}: rtol and atol cannot both be 0 "
                              "(float kernels never agree bit for bit)")


_OP_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class QuantizeParams(Section):
    calibration_images: int
    """Images the activation ranges are calibrated on, spread evenly over those given."""
    method: Literal["minmax", "entropy", "percentile"]
    """Calibration: observed min/max, KL-divergence-optimal range, or the 99.999th percentile of |x|."""
    per_channel: bool
    """One weight scale per output channel (per tensor otherwise)."""
    format: Literal["qdq", "qoperator"]
    """``qdq``: float ops wrapped in QuantizeLinear/DequantizeLinear, fused by ORT when the file is loaded;
    ``qoperator``: QLinearConv and friends written into the file."""
    activation_type: Literal["uint8", "int8"]
    weight_type: Literal["int8", "uint8"]
    exclude_op_types: str
    """Comma-separated op types left in float, e.g. ``ConvTranspose,Resize``."""
    exclude_nodes: str
    """Comma-separated node names (of the pre-processed fp32 graph) left in float; ORT re-quantises a Conv excluded
    between quantised neighbours when it loads the file (reported as ``excluded_but_int8``)."""
    reduce_range: bool
    """7-bit weights: avoids the u8s8 overflow of CPUs without VNNI, at some accuracy cost."""
    min_channels: int
    """Conv nodes with fewer output channels stay float; 0 quantises every Conv. ONNX Runtime's fast x86 int8
    convolution (MLAS ConvSym, VNNI) needs at least 16 output channels; narrower ones fall back to a generic
    im2col kernel that is slower than their fp32 version."""

    def check(self, prefix: str) -> None:
        _positive(self, prefix, "calibration_images")
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise ParamsError(f"{_join(prefix, 'weight_type')}: ONNX Runtime has no kernels for int8 activations "
                              "with uint8 weights")
        _require(self, prefix, "exclude_op_types", lambda v: all(_OP_TYPE.fullmatch(t) for t in _names(v)),
                 "comma-separated op type names")
        _within(self, prefix, "min_channels", 0, math.inf, open_high=True)

    def excluded_op_types(self) -> list[str]:
        return _names(self.exclude_op_types)

    def excluded_nodes(self) -> list[str]:
        return _names(self.exclude_nodes)


@dataclass(frozen=True)
class StreamParams(Section):
    """How a live stream's lesion decision is smoothed over recent frames (:mod:`ultraseg.runtime.stream`): a frame
    whose score lies near the operating point would otherwise flip the answer as the probe moves."""

    method: Literal["none", "debounce", "ema"]
    """``none``: each frame decides alone; ``debounce``: the decision changes only once ``frames`` consecutive
    frames disagree with it; ``ema``: an exponential average of the image-level score meets the operating point."""
    frames: int
    """debounce: consecutive disagreeing frames that change the decision (a true change shows ``frames - 1`` late)."""
    alpha: float
    """ema: weight of the newest frame's score (1 = no smoothing)."""

    def check(self, prefix: str) -> None:
        _require(self, prefix, "frames", lambda v: v >= 1, "an integer >= 1")
        _require(self, prefix, "alpha", lambda v: 0 < v <= 1, "a value in (0, 1]")


@dataclass(frozen=True)
class OodParams(Section):
    """The out-of-distribution check stored in the deployable file (:mod:`ultraseg.runtime.ood`): a frame whose
    pooled deepest features lie far from the train scans' gets no lesion answer."""

    val_pass: float
    """Share of val scans that must pass: the distance threshold is the smallest that lets them."""
    shrinkage: float
    """Weight of the mean variance on the diagonal of the train features' covariance (more dimensions than a few
    hundred scans pin down)."""
    min_side: int
    """Frames with a side below this (px) are refused before the network runs."""
    frame_stats: bool
    """Also describe each frame by statistics of its grey levels and texture, next to the deep features: a
    per-image normalised network sees a photograph's or a noise frame's deep features much as a scan's."""
    augmented_copies: int
    """Scanner-like augmented copies of each train scan added to the fit, so that another scanner's frames of
    breast tissue stay in distribution (0 = the train scans alone)."""

    def check(self, prefix: str) -> None:
        _require(self, prefix, "val_pass", lambda v: 0 < v <= 1, "a value in (0, 1]")
        _require(self, prefix, "shrinkage", lambda v: 0 < v <= 1, "a value in (0, 1]")
        _require(self, prefix, "min_side", lambda v: v >= 1, "an integer >= 1")
        _within(self, prefix, "augmented_copies", 0, 20)


@dataclass(frozen=True)
class PresenceParams(Section):
    """The image-level answer "is there a lesion": the presence head's probability, calibrated on val, against an
    operating point chosen on val."""

    sensitivity: float
    """The operating point is the highest that still answers "lesion" on at least this share of val lesion scans."""
    fill_empty: bool
    """Where the answer is "lesion" but no pixel passes the threshold, show the region around the most probable
    pixel instead of nothing."""

    def check(self, prefix: str) -> None:
        _require(self, prefix, "sensitivity", lambda v: 0 < v <= 1, "a value in (0, 1]")


@dataclass(frozen=True)
class DeployParams(Section):
    """The deployable model's threshold and post-processing rule (:class:`ultraseg.runtime.postprocess.PostProcess`),
    chosen on val over the grid below; test is never looked at."""

    threshold_step: float
    """Spacing of the pixel thresholds tried, from ``threshold_step`` to ``1 - threshold_step``."""
    gates: tuple[float, ...]
    """Highest-probability gates tried (0 = none)."""
    min_areas: tuple[float, ...]
    """Smallest lesion kept, as fractions of the image area, tried (0 = keep all)."""
    keep_largest: tuple[bool, ...]
    flips: tuple[bool, ...]
    """Test-time flip averaging tried (true: the model also runs on the mirror image). A second model call per frame
    does not fit the one-core budget of ``benchmark``'s end-to-end time, so params.yaml tries only ``false``."""
    dice_tolerance: float
    """Among the rules whose val lesion Dice is within this of the best rule's, the one that leaves the most normal
    val images clean is deployed: a user scanning healthy tissue should mostly see "no lesion"."""
    stream: StreamParams
    """The live-stream smoothing stored in the deployable file with the rule."""
    ood: OodParams
    """The out-of-distribution check stored in the deployable file."""
    presence: PresenceParams
    """The image-level answer stored in the deployable file (files whose network has no presence head fall back to
    the highest pixel probability and the ``gates``)."""

    def check(self, prefix: str) -> None:
        _within(self, prefix, "threshold_step", 0.001, 0.5)
        _require(self, prefix, "gates", lambda v: len(v) > 0 and all(0 <= g < 1 for g in v), "values in [0, 1)")
        _require(self, prefix, "min_areas", lambda v: len(v) > 0 and all(0 <= a < 1 for a in v), "values in [0, 1)")
        for name in ("keep_largest", "flips"):
            _require(self, prefix, name, lambda v: len(v) > 0, "at least one of true, false")
        _within(self, prefix, "dice_tolerance", 0.0, 1.0)


@dataclass(frozen=True)
class EvaluateParams(Section):
    """Test-split scoring of every model variant (the split is never used to choose anything)."""

    threshold: float | Literal["val"]
    """``val``: each variant's probability threshold of best lesion-mean Dice on the val split; or a fixed value."""
    threshold_step: float
    """Spacing of the thresholds tried on val, from ``threshold_step`` to ``1 - threshold_step``."""
    bootstrap: int
    """Resamples of the lesion images for the 95% confidence interval of the headline Dice."""
    seed: int
    """Seed of the bootstrap."""
    external: tuple[str, ...]
    """Labelled folders (or CSV files) of other scans on which the external stage scores the deployable file
    (:mod:`ultraseg.data.labelled` lists the layouts); empty: none."""

    def check(self, prefix: str) -> None:
        _require(self, prefix, "threshold", lambda v: v == "val" or 0.0 < v < 1.0, "'val' or a probability in (0, 1)")
        _within(self, prefix, "threshold_step", 0.001, 0.5)
        _positive(self, prefix, "bootstrap")


@dataclass(frozen=True)
class BenchmarkParams(Section):
    """Latency, throughput and memory of every variant, measured on this machine's CPU."""

    size: int | None
    """Input side at deployment (px); ``null`` uses ``preprocess.size``."""
    threads: tuple[int, ...]
    """Thread counts to measure with (1 is required); 1 simulates a small edge device, 0 means every core."""
    warmup: int
    """Untimed calls before timing."""
    runs: int
    """Timed batch-1 calls; p50 and p95 are over these."""
    batch: int
    """Batch size of the throughput measurement."""
    batch_runs: int
    """Timed calls of the throughput measurement."""
    max_disturbance: float
    """A measurement is repeated when other processes used more than this fraction of the CPU time available to
    it (all cores' time over its wall time) while it ran."""
    retries: int
    """Repeats of a disturbed measurement; the least disturbed one is kept and its disturbance reported."""
    memory_goal_mb: float
    """Peak resident memory (MB) the process holding only the runtime and the deployable file should stay under;
    reported beside the measured peak."""

    def check(self, prefix: str) -> None:
        _require(self, prefix, "size", lambda v: v is None or (v >= 16 and v % 16 == 0),
                 "null or a multiple of 16 (>= 16)")
        _require(self, prefix, "threads", lambda v: 1 in v and min(v) >= 0,
                 "thread counts >= 0 including 1 (the edge-device setting the report and trade-off plot use)")
        _positive(self, prefix, "runs", "batch", "batch_runs")
        for name in ("warmup", "retries"):
            _within(self, prefix, name, 0, math.inf, open_high=True)
        _within(self, prefix, "max_disturbance", 0.0, 1.0)
        _positive(self, prefix, "memory_goal_mb")


@dataclass(frozen=True)
class Params(Section):
    fetch: FetchParams
    preprocess: PreprocessParams
    split: SplitParams
    train: TrainParams
    distill: DistillParams
    prune: PruneParams
    export: ExportParams
    quantize: QuantizeParams
    deploy: DeployParams
    evaluate: EvaluateParams
    benchmark: BenchmarkParams


# ---------------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float, lists to tuples, mappings
    build their section)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, option, key)
            except ParamsError:
                pass
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
    """``cls`` from ``data``, which must give every key: no field has a default to fall back on."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ParamsError(f"unknown key {_join(prefix, unknown[0])}; valid keys here: {', '.join(names)}")
    missing = [name for name in names if name not in data]
    if missing:
        raise ParamsError(f"missing key {_join(prefix, missing[0])}; every key must be set "
                          "(the project's params.yaml lists them all)")
    return cls(**{name: _convert(data[name], hints[name], _join(prefix, name)) for name in names})


def from_dict(data: dict[str, Any], cls: type = Params) -> Any:
    """Build and validate ``cls`` from a nested dict that sets every key (as a model file's stored section does)."""
    obj = _build(cls, data, "")
    obj.validate()
    return obj


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file, which must set every key (there are no built-in defaults): an empty or
    cut-short file is refused naming the first missing key. Every error message starts with the file's path."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:  # PyYAML's message spans lines (an excerpt and a caret): keep what and where
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if data is None:
        raise ParamsError(f"{path}: empty params file")
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    try:
        params = _build(Params, data, "")
        params.validate()
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None
    return params


def to_dict(obj: Any) -> dict[str, Any]:
    """A params section as plain JSON-able data (for checkpoints and ONNX metadata)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def digest(obj: Any) -> str:
    """A short stable hash of a params section."""
    return hashlib.sha256(json.dumps(to_dict(obj), sort_keys=True).encode()).hexdigest()[:12]
