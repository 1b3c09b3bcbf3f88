"""Every model variant the pipeline produces, and one way to run any of them.

A variant is a network (``teacher``, ``student``, ``pruned``) in a runtime (PyTorch eager, ONNX Runtime) at a
precision (fp32, int8). The evaluate and benchmark stages iterate over the same list, so a variant cannot be scored
and not timed, or the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.special import expit

Predict = Callable[[np.ndarray], np.ndarray]
"""``predict(images (N, 1, H, W) float32) -> logits (N, 1, H, W) float32``."""


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


Network = Literal["teacher", "student", "pruned"]
NETWORKS: tuple[Network, ...] = ("teacher", "student", "pruned")
"""The trained networks, in the order the pipeline makes them."""
DEPLOYABLE_NETWORK: Network = "pruned"
"""The network that is quantized to int8 and deployed."""


ONNX_DIR = "onnx"
"""The export stage's folder of fp32 ONNX files, inside the models directory."""


def checkpoint_file(network: str) -> str:
    """A network's PyTorch checkpoint, relative to the models directory."""
    return f"{network}.pt"


def onnx_file(network: str) -> str:
    """A network's fp32 ONNX file, relative to the models directory."""
    return f"{ONNX_DIR}/{network}.onnx"


INT8_FILE = f"{DEPLOYABLE_NETWORK}.int8.onnx"
"""The int8 model, relative to the models directory."""
DEPLOY_FILE = "deploy/ultraseg.int8.onnx"
"""The deployable file users run (the int8 model with its post-processing rule), relative to the models
directory."""

VARIANTS: tuple[Variant, ...] = (
    *(v for n in NETWORKS for v in (Variant(n, n, "torch", "fp32", checkpoint_file(n)),
                                    Variant(f"{n}_onnx", n, "onnxruntime", "fp32", onnx_file(n)))),
    Variant(f"{DEPLOYABLE_NETWORK}_int8", DEPLOYABLE_NETWORK, "onnxruntime", "int8", INT8_FILE),
)
DEPLOYED = f"{DEPLOYABLE_NETWORK}_int8"
"""The variant an edge device runs: the sample figure and the headline ratios are about it."""


def by_name(name: str) -> Variant:
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    raise KeyError(f"unknown variant {name!r}; known: {', '.join(v.name for v in VARIANTS)}")


def predictor(variant: Variant, models_dir: Path, threads: int | None = None) -> Predict:
    """A function computing ``variant``'s logits on the CPU; ``threads`` intra-op threads (None: the runtime's
    default). Raises ``FileNotFoundError`` naming the file when the variant has not been built."""
    path = Path(models_dir) / variant.file
    if not path.exists():
        raise FileNotFoundError(f"{path}: model file of variant {variant.name!r} missing; run dvc repro")
    if variant.runtime == "onnxruntime":
        return onnx_predictor(path, threads)
    import torch

    from ultraseg import checkpoint  # torch: only for the PyTorch variants

    model, _ = checkpoint.load(path)
    if threads is not None:
        torch.set_num_threads(threads)

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))).numpy()

    return predict


def onnx_predictor(path: Path, threads: int | None = None) -> Predict:
    """The logits function of any ONNX file (fp32 or int8) in ONNX Runtime on the CPU."""
    from ultraseg.onnx_io import INPUT, session

    sess = session(path, threads)
    return lambda images: sess.run(None, {INPUT: np.ascontiguousarray(images, dtype=np.float32)})[0]


def probabilities(predict: Predict, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Lesion probabilities (N, H, W) of normalised images (N, H, W), in batches."""
    logits = [predict(images[start:start + batch_size, None])[:, 0] for start in range(0, len(images), batch_size)]
    return expit(np.concatenate(logits)).astype(np.float32)
