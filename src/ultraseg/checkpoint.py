"""Checkpoints that rebuild their model without the params file or pickled code.

A checkpoint is a dict: ``state`` (the state dict) and ``meta`` — the ``build_model`` config, the preprocessing
params and normalisation the model expects, the input size, the decision threshold, and the run's provenance.
Channel-pruned models rebuild from the weights' shapes (:func:`ultraseg.models.registry.rebuild_from_state_dict`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ultraseg.io import atomic_path
from ultraseg.models.registry import rebuild_from_state_dict


def save(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    if "model" not in meta:
        raise ValueError("checkpoint meta needs the model config under 'model'")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state": state, "meta": meta}, tmp)


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model (in eval mode, on ``device``) and its meta."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found; run the stage that writes it") from None
    model = rebuild_from_state_dict(blob["meta"]["model"], blob["state"])
    return model.to(device).eval(), blob["meta"]
