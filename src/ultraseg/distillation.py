"""Knowledge distillation of the teacher into a small student (Hinton et al. 2015, "Distilling the Knowledge in a
Neural Network"), for per-pixel binary segmentation.

The student learns from the masks (the task loss of ``train.loss``) and from the teacher's temperature-softened
lesion probabilities: the binary KL divergence ``KL(sigmoid(t/T) || sigmoid(s/T))`` per pixel, scaled by ``T**2``
so its gradients keep their size as ``T`` changes.

Where the teacher's logits come from is ``distill.teacher_logits``:

- ``cached``: the teacher runs once over the unaugmented training images; each sample's logits then get that
  sample's geometric augmentation (flip, affine, elastic) with the image, while the gain, speckle and shadow changes
  reach the student only. The student so learns to see through those changes what the teacher sees on the clean
  scan, and the teacher, whose forward pass costs several student steps on a CPU, runs once instead of every epoch.
- ``live``: the teacher runs on every augmented batch and sees exactly what the student sees.

With ``distill.normal_target: background`` the teacher's logits on normal scans (empty masks) are clipped to that
scan's median logit, the teacher's own background level there: the student, which the deployment gate reads,
then learns the teacher's calibration on normal tissue without copying its false positives.

Networks with a presence head (:class:`~ultraseg.models.blocks.PresenceHead`) also distil the teacher's presence
logit, with the same temperature and weighted by ``distill.presence_weight``; cached, it is the teacher's answer for
the unaugmented scan.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ultraseg import training
from ultraseg.losses import empty_masks
from ultraseg.models.unet import Outputs, split_outputs
from ultraseg.params import Params


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean per-pixel binary KL(teacher || student) of the softened probabilities, times ``T**2``."""
    t = teacher_logits / temperature
    s = student_logits / temperature
    p = torch.sigmoid(t)
    # KL = sum over {lesion, background} of p log p - p log q, written with logsigmoid for stability
    kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.mean() * temperature**2


def background_on_normals(teacher_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``teacher_logits`` (B, 1, H, W) with each normal scan's (empty mask's) map clipped to its median logit."""
    normal = empty_masks(masks).view(-1, 1, 1, 1)
    median = teacher_logits.flatten(1).median(1).values.view(-1, 1, 1, 1)
    return torch.where(normal, torch.minimum(teacher_logits, median), teacher_logits)


class DistillLoss(nn.Module):
    """``task_weight * task(student, masks) + kd_weight * kd(student, teacher)
    + presence_weight * kd(student presence, teacher presence)``; the teacher is frozen.

    ``normal_target``: ``teacher`` distils the teacher's logits everywhere; ``background`` clips them on normal
    scans to :func:`background_on_normals`. The presence term needs both networks to have a presence head."""

    def __init__(self, task: nn.Module, teacher: nn.Module | None, temperature: float, task_weight: float,
                 kd_weight: float, normal_target: str = "teacher", presence_weight: float = 0.0) -> None:
        super().__init__()
        if (kd_weight > 0 or presence_weight > 0) and teacher is None:
            raise ValueError("a positive kd_weight or presence_weight needs a teacher")
        if normal_target not in ("teacher", "background"):
            raise ValueError(f"normal_target must be 'teacher' or 'background', not {normal_target!r}")
        self.task, self.teacher, self.normal_target = task, teacher, normal_target
        self.temperature, self.task_weight, self.kd_weight = temperature, task_weight, kd_weight
        self.presence_weight = presence_weight
        self._last: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor | None]] | None = None
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def forward(self, outputs: Outputs, images: torch.Tensor, masks: torch.Tensor,
                teacher_logits: torch.Tensor | None = None,
                teacher_presence: torch.Tensor | None = None) -> torch.Tensor:
        """``teacher_logits`` and ``teacher_presence`` (cached ones, the maps warped with the batch) spare the
        teacher's pass over ``images``."""
        logits, presence = split_outputs(outputs)
        loss = self.task_weight * self.task(outputs, masks) if self.task_weight > 0 else logits.new_zeros(())
        if self.kd_weight == 0 and self.presence_weight == 0:
            return loss
        if teacher_logits is None:
            teacher_logits, teacher_presence = self._teacher_outputs(images)
        if self.kd_weight > 0:
            if self.normal_target == "background":
                teacher_logits = background_on_normals(teacher_logits, masks)
            loss = loss + self.kd_weight * kd_loss(logits, teacher_logits, self.temperature)
        if self.presence_weight > 0:
            if presence is None or teacher_presence is None:
                raise ValueError("distill.presence_weight > 0 needs a presence head on the teacher and the student")
            loss = loss + self.presence_weight * kd_loss(presence, teacher_presence, self.temperature)
        return loss

    def _teacher_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        training = torch.is_grad_enabled()
        with torch.no_grad():
            if training:  # a new augmented batch every step: nothing to reuse
                return _floats(self.teacher(images))
            # validation (under no_grad) shows the same images every epoch: the answer for the last batch is kept
            if self._last is None or not torch.equal(self._last[0], images):
                self._last = (images.clone(), _floats(self.teacher(images)))
            return self._last[1]


def _floats(outputs: Outputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits, presence = split_outputs(outputs)
    return logits.float(), None if presence is None else presence.float()


def teacher_targets(params: Params, teacher: nn.Module, images: np.ndarray,
                    device: torch.device) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The teacher's logits (N, S, S) and presence logits (N,) (None without a presence head) for normalised,
    unaugmented train images (N, S, S), computed once; None when the teacher runs live or distillation is off."""
    cfg = params.distill
    if cfg.teacher_logits != "cached" or cfg.kd_weight + cfg.presence_weight == 0:
        return None
    logits, presence = training.predict_outputs(teacher, images, device)
    return logits[:, 0].numpy(), None if presence is None else presence[:, 0].numpy()
