"""Every model variant the pipeline produces, and one way to run any of them, PyTorch checkpoints included.

A variant is a network (``teacher``, ``student``, ``pruned``) in a runtime (PyTorch eager, ONNX Runtime) at a
precision (fp32, int8). The evaluate and benchmark stages iterate over the same list, so a variant cannot be scored
and not timed, or the other way round. The file names, and running an ONNX file without PyTorch, are the runtime's:
:mod:`ultraseg.runtime.model_files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.special import expit

from ultraseg.runtime.model_files import (DEPLOYABLE_NETWORK, INT8_FILE, INT8_VARIANT, NETWORKS, Outputs, Predict,
                                          checkpoint_file, onnx_file, onnx_predictor)


@dataclass(frozen=True)
class Variant:
    name: str
    network: str
    runtime: Literal["torch", "onnxruntime"]
    precision: Literal["fp32", "int8"]
    file: str
    """Path relative to the models directory."""

    @property
    def label(self) -> str:
        runtime = "PyTorch" if self.runtime == "torch" else "ORT"
        return f"{self.network} ({runtime} {self.precision})"


VARIANTS: tuple[Variant, ...] = (
    *(v for n in NETWORKS for v in (Variant(n, n, "torch", "fp32", checkpoint_file(n)),
                                    Variant(f"{n}_onnx", n, "onnxruntime", "fp32", onnx_file(n)))),
    Variant(INT8_VARIANT, DEPLOYABLE_NETWORK, "onnxruntime", "int8", INT8_FILE),
)


def by_name(name: str) -> Variant:
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    raise KeyError(f"unknown variant {name!r}; known: {', '.join(v.name for v in VARIANTS)}")


def predictor(variant: Variant, models_dir: Path, threads: int | None = None) -> Predict:
    """A function computing ``variant``'s :class:`~ultraseg.runtime.model_files.Outputs` on the CPU; ``threads`` intra-op threads (None: the runtime's
    default). Raises ``FileNotFoundError`` naming the file when the variant has not been built."""
    path = Path(models_dir) / variant.file
    if not path.exists():
        raise FileNotFoundError(f"{path}: model file of variant {variant.name!r} missing; run dvc repro")
    if variant.runtime == "onnxruntime":
        return onnx_predictor(path, threads)
    import torch

    from ultraseg import checkpoint  # torch: only for the PyTorch variants
    from ultraseg.models import split_outputs

    model, _ = checkpoint.load(path)
    if threads is not None:
        torch.set_num_threads(threads)

    def predict(images: np.ndarray) -> Outputs:
        with torch.inference_mode():
            logits, presence = split_outputs(model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))))
        return Outputs(logits.numpy(), None if presence is None else presence[:, 0].numpy())

    return predict


def probabilities(predict: Predict, images: np.ndarray,
                  batch_size: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
    """Lesion probabilities (N, H, W) of normalised images (N, H, W), in batches, and the raw presence logits (N,)
    (None for a network without a presence head)."""
    outs = [predict(images[start:start + batch_size, None]) for start in range(0, len(images), batch_size)]
    probs = expit(np.concatenate([o.logits[:, 0] for o in outs])).astype(np.float32)
    has_presence = bool(outs) and outs[0].presence is not None
    return probs, np.concatenate([o.presence for o in outs]) if has_presence else None
