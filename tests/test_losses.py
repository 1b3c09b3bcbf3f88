"""Losses against values computed by hand from their formulas on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ultraseg.losses import (
    BCELoss,
    CombinedLoss,
    FocalLoss,
    SoftDiceLoss,
    TverskyLoss,
    bce,
    build_loss,
    empty_masks,
    empty_peak,
    focal,
    soft_dice,
    tversky,
)

# two pixels of one image: p = sigmoid(logit) = (0.5, 0.75), target (1, 0)
LOGITS = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 2)
TARGET = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
TP, FP, FN = 0.5, 0.75, 0.5  # Σpt, Σp(1-t), Σ(1-p)t


def test_bce_by_hand():
    expected = (-math.log(0.5) - math.log(1 - 0.75)) / 2
    assert bce(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    # pos_weight 3 multiplies the lesion pixel's term
    expected = (-3 * math.log(0.5) - math.log(0.25)) / 2
    assert BCELoss(pos_weight=3.0)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_soft_dice_by_hand():
    expected = 1 - (2 * TP + 1) / ((0.5 + 0.75) + 1.0 + 1)
    assert soft_dice(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    assert SoftDiceLoss(smooth=0.0)(LOGITS, TARGET).item() == pytest.approx(1 - 2 * 0.5 / 2.25, rel=1e-6)


def test_soft_dice_is_per_image_mean():
    # image 2 is perfect (loss ~0), so the batch loss is half of image 1's
    logits = torch.cat([LOGITS, torch.tensor([40.0, -40.0]).view(1, 1, 1, 2)])
    target = torch.cat([TARGET, TARGET])
    assert soft_dice(logits, target).item() == pytest.approx(soft_dice(LOGITS, TARGET).item() / 2, rel=1e-5)


def test_focal_by_hand():
    alpha, gamma = 0.25, 2.0
    # lesion pixel: p_t = 0.5, alpha_t = alpha; background pixel: p_t = 1 - 0.75, alpha_t = 1 - alpha
    expected = (alpha * 0.5**gamma * -math.log(0.5) + (1 - alpha) * 0.75**gamma * -math.log(0.25)) / 2
    assert focal(LOGITS, TARGET, alpha, gamma).item() == pytest.approx(expected, rel=1e-6)
    assert FocalLoss(alpha=0.25, gamma=2.0)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_focal_without_focusing_is_bce():
    logits, target = torch.randn(2, 1, 5, 6), (torch.rand(2, 1, 5, 6) > 0.5).float()
    torch.testing.assert_close(focal(logits, target, alpha=None, gamma=0.0), bce(logits, target))


def test_tversky_by_hand():
    alpha, beta = 0.3, 0.7
    expected = 1 - (TP + 1) / (TP + alpha * FP + beta * FN + 1)
    assert tversky(LOGITS, TARGET, alpha, beta).item() == pytest.approx(expected, rel=1e-6)
    # alpha weights false positives: raising it raises the loss of this prediction with FP > FN
    assert TverskyLoss(alpha=0.7, beta=0.3)(LOGITS, TARGET) > TverskyLoss(alpha=0.3, beta=0.7)(LOGITS, TARGET)


def test_tversky_half_half_is_dice():
    logits, target = torch.randn(3, 1, 4, 5), (torch.rand(3, 1, 4, 5) > 0.5).float()
    torch.testing.assert_close(tversky(logits, target, 0.5, 0.5, smooth=0.0), soft_dice(logits, target, smooth=0.0))


def test_perfect_and_empty_predictions_cost_nothing():
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 30  # confident logits of the right sign everywhere
    for loss in (soft_dice, tversky, bce, focal):
        assert loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    # an empty mask with a confidently empty prediction: Σp ≈ 0, loss = Σp / (Σp + 1) ≈ 0
    empty = torch.zeros(1, 1, 8, 8)
    assert soft_dice(torch.full_like(empty, -10.0), empty).item() < 1e-2
    # the same empty mask with a confident false positive costs nearly 1
    assert soft_dice(torch.full_like(empty, 10.0), empty).item() > 0.98


@pytest.mark.parametrize("config", [{"bce": 1.0, "dice": 1.0}, {"focal": 1.0, "tversky": 1.0, "focal_gamma": 2.0}])
def test_gradients_finite(config):
    logits = (torch.randn(2, 1, 6, 7) * 50).requires_grad_()  # saturated logits too
    target = (torch.rand(2, 1, 6, 7) > 0.5).float()
    build_loss(config)(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_build_loss_weights_and_options():
    loss = build_loss({"focal": 2.0, "tversky": 0.5, "focal_gamma": 1.0, "tversky_alpha": 0.4, "tversky_beta": 0.6})
    assert isinstance(loss, CombinedLoss)
    assert set(loss.terms) == {"focal", "tversky"}
    expected = 2.0 * focal(LOGITS, TARGET, 0.25, 1.0) + 0.5 * tversky(LOGITS, TARGET, 0.4, 0.6)
    assert loss(LOGITS, TARGET).item() == pytest.approx(expected.item(), rel=1e-6)
    components = loss.components(LOGITS, TARGET)
    assert components["tversky"].item() == pytest.approx(tversky(LOGITS, TARGET, 0.4, 0.6).item(), rel=1e-6)
    # a zero weight leaves the term out; its options are then ignored
    assert set(build_loss({"bce": 1.0, "dice": 0.0, "dice_smooth": 0.5}).terms) == {"bce"}


def test_build_loss_errors():
    with pytest.raises(ValueError, match="focal_gama"):
        build_loss({"focal": 1.0, "focal_gama": 2.0})
    with pytest.raises(ValueError, match="lovasz"):
        build_loss({"lovasz": 1.0})
    with pytest.raises(ValueError, match="positive weight"):
        build_loss({"bce": 0.0})
    with pytest.raises(ValueError, match=">= 0"):
        build_loss({"bce": -1.0})
    with pytest.raises(ValueError, match="differ in shape"):
        bce(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


def test_empty_masks_flags_images_without_foreground():
    target = torch.zeros(3, 1, 4, 4)
    target[1, 0, 0, 0] = 1  # a single lesion pixel makes the scan non-empty
    target[2] = 0.5  # a soft mask (e.g. after resizing) is not empty either
    assert empty_masks(target).tolist() == [True, False, False]


def test_empty_peak_by_hand():
    # one empty-mask image of four pixels: fraction 0.5 keeps its two highest logits, (2, 0)
    logits = torch.tensor([2.0, -1.0, 0.0, -3.0]).view(1, 1, 2, 2)
    expected = (math.log1p(math.exp(2.0)) + math.log(2.0)) / 2
    assert empty_peak(logits, torch.zeros_like(logits), 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_empty_peak_reads_only_empty_masks_and_their_peaks():
    logits = torch.randn(3, 1, 10, 10).requires_grad_()
    target = torch.zeros(3, 1, 10, 10)
    target[1, 0, 4:6, 4:6] = 1  # image 1 holds a lesion: the term leaves it alone
    empty_peak(logits, target, 0.05).backward()
    touched = logits.grad.flatten(1) != 0
    assert touched.sum(1).tolist() == [5, 0, 5]  # 5% of 100 pixels, in each empty image only
    top5 = logits.detach()[0].flatten().topk(5).indices
    assert touched[0, top5].all()


def test_empty_peak_without_empty_masks_is_zero_and_differentiable():
    logits = torch.randn(2, 1, 4, 4).requires_grad_()
    loss = empty_peak(logits, torch.ones(2, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_empty_peak_separates_a_normal_scan_with_a_blob_where_soft_dice_saturates():
    clean = torch.full((1, 1, 32, 32), -6.0)
    blob = clean.clone()
    blob[..., 10:20, 10:20] = 4.0  # a confident 100-pixel false positive
    empty = torch.zeros_like(clean)
    assert empty_peak(blob, empty).item() > 3.0 > 0.01 > empty_peak(clean, empty).item()
    worse = blob.clone()
    worse[..., 10:20, 10:20] = 8.0
    assert soft_dice(worse, empty).item() - soft_dice(blob, empty).item() < 1e-3  # flat
    assert empty_peak(worse, empty).item() - empty_peak(blob, empty).item() > 3.0  # still pressing


def test_empty_peak_in_build_loss_and_bad_fraction():
    loss = build_loss({"bce": 1.0, "empty": 0.5, "empty_fraction": 0.1})
    assert set(loss.terms) == {"bce", "empty"}
    assert loss.terms["empty"].fraction == 0.1
    with pytest.raises(ValueError, match="empty_fraction"):
        empty_peak(LOGITS, TARGET, 0.0)


def test_presence_term_is_the_cross_entropy_of_lesion_versus_normal_images() -> None:
    masks = torch.zeros(3, 1, 4, 4)
    masks[1, 0, 1, 1] = 1.0  # one lesion image, two normal ones
    logits, presence = torch.randn(3, 1, 4, 4), torch.tensor([[2.0], [-1.0], [0.5]])
    loss = build_loss({"dice": 1.0, "presence": 0.25})
    expected = soft_dice(logits, masks) + 0.25 * F.binary_cross_entropy_with_logits(
        presence, torch.tensor([[0.0], [1.0], [0.0]]))
    assert loss((logits, presence), masks).item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(loss.components((logits, presence), masks)) == {"dice", "presence"}


def test_presence_term_without_a_presence_head_is_refused() -> None:
    with pytest.raises(ValueError, match="presence head"):
        build_loss({"dice": 1.0, "presence": 1.0})(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="presence"):
        build_loss({"dice": 1.0, "presence": -1.0})
