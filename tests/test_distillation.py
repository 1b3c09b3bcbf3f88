"""Distillation loss on known logits, and the combined loss's wiring."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ultraseg.distillation import DistillLoss, background_on_normals, kd_loss, teacher_targets
from ultraseg.losses import build_loss
from tests.conftest import shipped_params


def binary_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kd_loss_matches_hand_computed_binary_kl() -> None:
    student = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    teacher = torch.tensor([[[[1.0, 2.0], [-3.0, 0.5]]]])
    T = 2.0
    expected = sum(binary_kl(sigmoid(t / T), sigmoid(s / T)) for s, t in
                   zip([0.0, 2.0, -1.0, 3.0], [1.0, 2.0, -3.0, 0.5])) / 4 * T**2
    assert kd_loss(student, teacher, T).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    logits = torch.randn(2, 1, 5, 7)
    assert kd_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kd_loss(logits, logits + 1.0, 3.0).item() > 0


def test_kd_loss_is_stable_for_saturated_logits() -> None:
    student = torch.tensor([[[[-60.0, 60.0]]]], requires_grad=True)
    loss = kd_loss(student, torch.tensor([[[[60.0, -60.0]]]]), 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


class Constant(nn.Module):
    """A 'teacher' whose logits are a fixed function of the input, with a parameter to check it stays frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


def test_distill_loss_combines_task_and_kd_terms() -> None:
    task = build_loss({"bce": 1.0, "dice": 1.0})
    teacher = Constant()
    images = torch.randn(2, 1, 6, 6)
    masks = (torch.rand(2, 1, 6, 6) > 0.5).float()
    logits = torch.randn(2, 1, 6, 6, requires_grad=True)
    loss = DistillLoss(task, teacher, temperature=2.0, task_weight=0.5, kd_weight=3.0)(logits, images, masks)
    expected = 0.5 * task(logits, masks) + 3.0 * kd_loss(logits, 2.0 * images, 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert teacher.scale.grad is None and not teacher.training  # frozen, in eval mode


def test_kd_weight_zero_is_the_task_loss_alone_and_needs_no_teacher() -> None:
    task = build_loss({"bce": 1.0})
    logits, masks = torch.randn(1, 1, 4, 4), (torch.rand(1, 1, 4, 4) > 0.5).float()
    plain = DistillLoss(task, None, 2.0, 1.0, 0.0)(logits, torch.zeros_like(logits), masks)
    assert plain.item() == pytest.approx(task(logits, masks).item())
    with pytest.raises(ValueError, match="teacher"):
        DistillLoss(task, None, 2.0, 1.0, 1.0)


class Refusing(nn.Module):
    """A teacher that must not be run: cached logits stand in for it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher ran although its logits were given")


def test_given_teacher_logits_replace_the_teachers_pass() -> None:
    task = build_loss({"bce": 1.0, "dice": 1.0})
    images = torch.randn(2, 1, 6, 6)
    masks = (torch.rand(2, 1, 6, 6) > 0.5).float()
    logits = torch.randn(2, 1, 6, 6)
    live = DistillLoss(task, Constant(), 2.0, 1.0, 1.0)(logits, images, masks)
    cached = DistillLoss(task, Refusing(), 2.0, 1.0, 1.0)(logits, images, masks, 2.0 * images)
    assert cached.item() == pytest.approx(live.item(), rel=1e-6)


def test_cached_targets_are_the_teachers_logits_on_the_plain_images() -> None:
    images = torch.randn(5, 7, 9).numpy()
    logits, presence = teacher_targets(shipped_params(), Constant().eval(), images, torch.device("cpu"))
    assert logits.shape == images.shape and logits.dtype == images.dtype and presence is None
    torch.testing.assert_close(torch.from_numpy(logits), 2.0 * torch.from_numpy(images))


class WithPresence(Constant):
    """A 'teacher' with a presence logit: the image's mean times its scale."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale * x, self.scale * x.mean(dim=(1, 2, 3)).unsqueeze(1)


def test_cached_targets_hold_the_teachers_presence_logits() -> None:
    images = torch.randn(5, 7, 9).numpy()
    logits, presence = teacher_targets(shipped_params(), WithPresence().eval(), images, torch.device("cpu"))
    assert logits.shape == images.shape and presence.shape == (5,)
    torch.testing.assert_close(torch.from_numpy(presence), 2.0 * torch.from_numpy(images).mean(dim=(1, 2)))


def test_presence_logit_is_distilled_with_its_weight() -> None:
    task = build_loss({"bce": 1.0, "presence": 0.5})
    images = torch.randn(2, 1, 6, 6)
    masks = torch.zeros(2, 1, 6, 6)
    masks[0, 0, 2:4, 2:4] = 1
    outputs = (torch.randn(2, 1, 6, 6), torch.randn(2, 1))
    teacher = WithPresence()
    loss = DistillLoss(task, teacher, 2.0, 1.0, 3.0, presence_weight=4.0)(outputs, images, masks)
    t_logits, t_presence = teacher(images)
    expected = (task(outputs, masks) + 3.0 * kd_loss(outputs[0], t_logits, 2.0)
                + 4.0 * kd_loss(outputs[1], t_presence, 2.0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    cached = DistillLoss(task, Refusing(), 2.0, 1.0, 3.0, presence_weight=4.0)(outputs, images, masks,
                                                                             t_logits, t_presence)
    assert cached.item() == pytest.approx(expected.item(), rel=1e-6)


def test_presence_distillation_needs_presence_heads() -> None:
    task = build_loss({"bce": 1.0})
    with pytest.raises(ValueError, match="presence head"):
        DistillLoss(task, Constant(), 2.0, 1.0, 1.0, presence_weight=1.0)(
            torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("change", [{"teacher_logits": "live"}, {"kd_weight": 0.0, "presence_weight": 0.0}])
def test_no_cached_targets_when_the_teacher_runs_live_or_not_at_all(change: dict) -> None:
    params = shipped_params({"distill": change})
    assert teacher_targets(params, Refusing(), torch.randn(2, 4, 4).numpy(), torch.device("cpu")) is None


class Counting(Constant):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(x)


def test_teacher_runs_once_for_a_val_batch_seen_again() -> None:
    teacher, task = Counting(), build_loss({"bce": 1.0})
    loss = DistillLoss(task, teacher, 2.0, 1.0, 1.0)
    images, masks, logits = torch.randn(3, 1, 4, 4), torch.zeros(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)
    with torch.no_grad():  # as in validation
        first = loss(logits, images, masks)
        again = loss(logits, images.clone(), masks)  # the val set, next epoch
        assert teacher.calls == 1 and again.item() == first.item()
        images.add_(1.0)  # changed in place: the kept answer must not be reused
        changed = loss(logits, images, masks)
    assert teacher.calls == 2 and changed.item() != first.item()


def test_teacher_runs_on_every_training_batch() -> None:
    teacher, task = Counting(), build_loss({"bce": 1.0})
    loss = DistillLoss(task, teacher, 2.0, 1.0, 1.0)
    images, masks = torch.randn(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)
    logits = torch.zeros(3, 1, 4, 4, requires_grad=True)
    for _ in range(2):
        loss(logits, images, masks).backward()
    assert teacher.calls == 2 and loss._last is None  # nothing kept from training batches


def test_background_on_normals_clips_normal_scans_to_their_median_and_leaves_lesion_scans_alone() -> None:
    teacher = torch.tensor([[[[-5.0, -4.0], [-3.0, 6.0]]], [[[-5.0, -4.0], [-3.0, 6.0]]]])
    masks = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 1.0]]]])
    clipped = background_on_normals(teacher, masks)
    # torch's median of an even count is the lower middle value
    assert clipped[0].flatten().tolist() == [-5.0, -4.0, -4.0, -4.0]
    assert torch.equal(clipped[1], teacher[1])
    assert torch.equal(background_on_normals(teacher[1:], masks[1:]), teacher[1:])


def test_background_target_stops_the_student_copying_a_false_positive_on_a_normal_scan() -> None:
    task = build_loss({"bce": 1.0})
    teacher = torch.full((1, 1, 4, 4), -6.0)
    teacher[..., 1, 1] = 5.0  # the teacher's false positive on a normal scan
    masks, images = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)

    def kd_part(target: str, student: torch.Tensor) -> float:
        loss = DistillLoss(task, Refusing(), 2.0, 1.0, 1.0, target)
        return loss(student, images, masks, teacher).item() - task(student, masks).item()

    copy, clean = teacher.clone(), torch.full((1, 1, 4, 4), -6.0)
    assert kd_part("teacher", copy) == pytest.approx(0.0, abs=1e-6)
    assert kd_part("teacher", clean) > 0.1
    assert kd_part("background", clean) == pytest.approx(0.0, abs=1e-6)
    assert kd_part("background", copy) > 0.1
    with pytest.raises(ValueError, match="normal_target"):
        DistillLoss(task, Refusing(), 2.0, 1.0, 1.0, "mask")
