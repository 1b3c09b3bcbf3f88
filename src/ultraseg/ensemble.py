"""An ensemble of segmentation networks that answers as one network: the mean of its members' logits.

Networks trained alike from different seeds make partly independent mistakes, so their average is usually a
better teacher than any one of them (Lakshminarayanan et al., 2017, arXiv:1612.01474). The average is taken over
logits rather than probabilities so that the ensemble's output is still a logit: the sigmoid, the val threshold,
the temperature of the presence calibration and the distillation temperature then treat it exactly as they treat
a single network, and it can stand wherever a teacher does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ultraseg.models.unet import Outputs, split_outputs


class Ensemble(nn.Module):
    """``members`` run on the same image; the forward is the mean of their logits ``(B, C, H, W)`` and, when the
    members have a presence head, ``(mean logits, mean presence logits (B, 1))``: the same structure as each member's
    (:data:`~ultraseg.models.unet.Outputs`).

    Members must agree on their outputs' shapes and on having a presence head; each keeps its own weights, and the
    ensemble's ``train()``/``eval()`` and ``to()`` reach all of them.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("an ensemble needs at least one member network")
        self.members = nn.ModuleList(members)

    def forward(self, image: torch.Tensor) -> Outputs:
        logits, presence = zip(*(split_outputs(member(image)) for member in self.members))
        mean_logits = torch.stack(logits).mean(dim=0)
        with_head = [p is not None for p in presence]
        if not any(with_head):
            return mean_logits
        if not all(with_head):
            raise ValueError(f"{sum(with_head)} of the ensemble's {len(with_head)} members have a presence head; "
                             "all or none must")
        return mean_logits, torch.stack(presence).mean(dim=0)
