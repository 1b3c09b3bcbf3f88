"""Segmentation losses on logits ``(B, 1, H, W)`` against float targets in {0, 1} of the same shape.

Each loss is a function (``bce``, ``soft_dice``, ``focal``, ``tversky``, ``empty_peak``) and an ``nn.Module``
with typed arguments around it; :class:`CombinedLoss` sums weighted terms and :func:`build_loss` builds one from a dict.
Region losses (Dice, Tversky) are computed per image and averaged over the batch, with additive smoothing
``smooth`` in numerator and denominator, so an image with an empty mask and a confidently empty prediction costs
about 0 instead of being undefined.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ultraseg.models.unet import Outputs, split_outputs


def _check(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    return target.to(logits.dtype)


def _per_image_sums(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft true positives, false positives and false negatives of each image, shape ``(B,)``."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    tp = (p * t).sum(1)
    return tp, (p * (1 - t)).sum(1), ((1 - p) * t).sum(1)


def bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy averaged over pixels; ``pos_weight`` multiplies the lesion-pixel term."""
    target = _check(logits, target)
    weight = None if pos_weight is None else logits.new_tensor(pos_weight)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 Σpt + smooth) / (Σp + Σt + smooth)`` per image, averaged over the batch.

    Milletari et al., 2016 ("V-Net", arXiv:1606.04797), with linear rather than squared terms in the denominator.
    """
    target = _check(logits, target)
    tp, fp, fn = _per_image_sums(logits, target)
    # Σp + Σt = (tp + fp) + (tp + fn)
    return (1 - (2 * tp + smooth) / (2 * tp + fp + fn + smooth)).mean()


def focal(
    logits: torch.Tensor, target: torch.Tensor, alpha: float | None = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)`` averaged over pixels (Lin et al., 2017, arXiv:1708.02002).

    ``p_t`` is the predicted probability of the true class; ``alpha_t`` is ``alpha`` on lesion pixels and
    ``1 - alpha`` on background (``alpha=None`` weights both classes 1). ``gamma=0, alpha=None`` is :func:`bce`.
    """
    target = _check(logits, target)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-ce)
    loss = (1 - p_t) ** gamma * ce
    if alpha is not None:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean()


def tversky(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0
) -> torch.Tensor:
    """Tversky loss ``1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth)`` per image, averaged over the batch.

    Salehi et al., 2017 (arXiv:1706.05721): ``alpha`` weights false positives and ``beta`` false negatives;
    ``beta > alpha`` favours recall of small lesions. ``alpha = beta = 0.5`` is the soft Dice loss.
    """
    target = _check(logits, target)
    tp, fp, fn = _per_image_sums(logits, target)
    return (1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)).mean()


def empty_masks(target: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True for each image of ``target`` (B, 1, H, W) without a foreground pixel (a normal scan)."""
    return target.flatten(1).amax(1) == 0


def empty_peak(logits: torch.Tensor, target: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Cross-entropy towards 0 of the highest ``fraction`` of logits in each image whose mask is empty.

    Averaged over those images; 0 (still attached to the graph) for a batch without one. A scan is called clean
    only when its highest probability stays below the deployment gate, yet the pixel-mean BCE barely notices a
    small confident blob on a normal scan, and soft Dice on an empty mask saturates once any blob exists
    (``Σp / (Σp + smooth)`` is then close to 1 and flat). This term presses on exactly the pixels the gate reads.
    """
    target = _check(logits, target)
    if not 0 < fraction <= 1:
        raise ValueError(f"empty_fraction must be in (0, 1], got {fraction!r}")
    empty = empty_masks(target)
    if not bool(empty.any()):
        return logits.sum() * 0
    flat = logits.flatten(1)[empty]
    top = flat.topk(max(1, round(fraction * flat.shape[1])), dim=1).values
    return F.binary_cross_entropy_with_logits(top, torch.zeros_like(top))


def presence_bce(presence: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of presence logits ``(B, 1)`` against "the mask ``(B, 1, H, W)`` has a lesion pixel"."""
    return F.binary_cross_entropy_with_logits(presence, (~empty_masks(target)).to(presence.dtype).view_as(presence))


class BCELoss(nn.Module):
    """:func:`bce` as a module."""

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return bce(logits, target, self.pos_weight)


class SoftDiceLoss(nn.Module):
    """:func:`soft_dice` as a module."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_dice(logits, target, self.smooth)


class FocalLoss(nn.Module):
    """:func:`focal` as a module."""

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal(logits, target, self.alpha, self.gamma)


class TverskyLoss(nn.Module):
    """:func:`tversky` as a module."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0) -> None:
        super().__init__()
        self.alpha, self.beta, self.smooth = alpha, beta, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return tversky(logits, target, self.alpha, self.beta, self.smooth)


class EmptyPeakLoss(nn.Module):
    """:func:`empty_peak` as a module."""

    def __init__(self, fraction: float = 0.01) -> None:
        super().__init__()
        self.fraction = fraction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return empty_peak(logits, target, self.fraction)


class CombinedLoss(nn.Module):
    """Weighted sum ``Σ weight_k · loss_k(logits, target)`` of named loss modules, plus ``presence`` times
    :func:`presence_bce` of a network's presence logits.

    Args:
        terms: name → loss module; weights: name → weight (same names).
        presence: weight of the presence term; it needs the ``(logits, presence)`` outputs of a network with a
            presence head.
    """

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float], presence: float = 0.0) -> None:
        super().__init__()
        if set(terms) != set(weights) or not terms:
            raise ValueError(f"terms {sorted(terms)} and weights {sorted(weights)} must name the same losses")
        self.terms = nn.ModuleDict(terms)
        self.weights = {name: float(weights[name]) for name in terms}
        self.presence = float(presence)

    def components(self, outputs: Outputs, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term's unweighted value, for logging."""
        logits, presence = split_outputs(outputs)
        values = {name: loss(logits, target) for name, loss in self.terms.items()}
        if self.presence > 0:
            if presence is None:
                raise ValueError("the presence loss term needs a network with a presence head "
                                 "(model.presence: true), or a presence weight of 0")
            values["presence"] = presence_bce(presence, target)
        return values

    def forward(self, outputs: Outputs, target: torch.Tensor) -> torch.Tensor:
        weights = self.weights | {"presence": self.presence}
        return sum(weights[name] * value for name, value in self.components(outputs, target).items())


LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "dice": SoftDiceLoss,
    "focal": FocalLoss,
    "tversky": TverskyLoss,
    "empty": EmptyPeakLoss,
}


def _options() -> dict[str, tuple[str, str]]:
    """Every option key ``<loss>_<arg>`` → (loss, arg), from the loss classes' signatures."""
    return {
        f"{loss}_{arg}": (loss, arg)
        for loss, cls in LOSSES.items()
        for arg in inspect.signature(cls.__init__).parameters
        if arg != "self"
    }


def build_loss(config: Mapping[str, float | None]) -> CombinedLoss:
    """A :class:`CombinedLoss` from a flat dict of term weights and term options.

    Schema (every key optional, at least one positive weight):

    - weights: ``bce``, ``dice``, ``focal``, ``tversky``, ``empty`` — the weight of that term; a term that is
      absent or has weight 0 is left out; ``presence``: the weight of :func:`presence_bce` on the presence
      logits (see :class:`CombinedLoss`);
    - options: ``<term>_<argument>`` of the term's class —
      ``bce_pos_weight`` (None), ``dice_smooth`` (1.0), ``focal_alpha`` (0.25; None for no class weighting),
      ``focal_gamma`` (2.0), ``tversky_alpha`` (0.3, false positives), ``tversky_beta`` (0.7, false negatives),
      ``tversky_smooth`` (1.0), ``empty_fraction`` (0.01, the share of an empty-mask image's pixels pressed
      towards 0); options of a left-out term are ignored.

    Examples: ``{"bce": 1.0, "dice": 1.0}``;
    ``{"focal": 1.0, "tversky": 1.0, "focal_gamma": 2.0, "tversky_alpha": 0.3, "tversky_beta": 0.7}``.

    Raises:
        ValueError: for an unknown key (named), a negative weight or no positive weight.
    """
    options = _options()
    weights: dict[str, float] = {}
    kwargs: dict[str, dict[str, float | None]] = {name: {} for name in LOSSES}
    config = dict(config)
    presence = config.pop("presence", 0.0) or 0.0
    if presence < 0:
        raise ValueError(f"loss weight 'presence' must be a number >= 0, got {presence!r}")
    for key, value in config.items():
        if key in LOSSES:
            if value is None or value < 0:
                raise ValueError(f"loss weight {key!r} must be a number >= 0, got {value!r}")
            if value > 0:
                weights[key] = float(value)
        elif key in options:
            loss, arg = options[key]
            kwargs[loss][arg] = value
        else:
            valid = ", ".join([*LOSSES, "presence", *options])
            raise ValueError(f"unknown loss config key {key!r}; valid: {valid}")
    if not weights:
        raise ValueError(f"loss config {dict(config)} gives no term a positive weight; terms: {', '.join(LOSSES)}")
    return CombinedLoss({name: LOSSES[name](**kwargs[name]) for name in weights}, weights, presence)
