"""Checkpoints that rebuild their model without the params file or pickled code.

A checkpoint is a dict: ``state`` (the state dict) and ``meta`` — the ``build_model`` config, the preprocessing
params and normalisation the model expects, the input size, the decision threshold, and the run's provenance.
Channel-pruned models rebuild from the weights' shapes (:func:`ultraseg.models.registry.rebuild_from_state_dict`).
An :class:`~ultraseg.ensemble.Ensemble` of networks of one config is saved as one checkpoint whose ``meta`` names its
``members``; it loads as the ensemble, so every stage that uses a teacher uses it as it would one network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ultraseg.ensemble import Ensemble
from ultraseg.io import atomic_path
from ultraseg.models.registry import rebuild_from_state_dict


def save(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    if "model" not in meta:
        raise ValueError("checkpoint meta needs the model config under 'model'")
    members = len(model.members) if isinstance(model, Ensemble) else 1
    if meta.get("members", 1) != members:
        raise ValueError(f"checkpoint meta says {meta.get('members', 1)} members, the model has {members}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state": state, "meta": meta}, tmp)


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model (in eval mode, on ``device``) and its meta."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found; run the stage that writes it") from None
    meta, state = blob["meta"], blob["state"]
    members = meta.get("members", 1)
    if members == 1:
        model = rebuild_from_state_dict(meta["model"], state)
    else:
        model = Ensemble([rebuild_from_state_dict(meta["model"], member_state(state, k)) for k in range(members)])
    return model.to(device).eval(), meta


def member_state(state: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Member ``k``'s own state dict inside an :class:`~ultraseg.ensemble.Ensemble`'s."""
    prefix = f"members.{k}."
    return {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}
