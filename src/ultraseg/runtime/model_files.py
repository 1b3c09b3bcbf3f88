"""The names of the model files the pipeline writes, and one way to run any ONNX file, without PyTorch.

The networks (``teacher``, ``student``, ``pruned``) are trained in that order; ``pruned`` is quantized to int8 and,
with the threshold and post-processing rule chosen on val, becomes the deployable file users run
(:data:`DEPLOY_FILE`). :data:`DEPLOYED` is that file's name in every metric and figure, :data:`INT8_VARIANT` the int8
model's on its own. That file is the ``edge`` profile; the ``accurate`` profile (:data:`ACCURATE_FILE`) is the
teacher deployed the same way, for a machine that can spend the teacher's time per frame (:data:`PROFILES`). Paths are relative to the models directory. The PyTorch side of the variants (checkpoints, eager
predictors) is :mod:`ultraseg.variants`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort


class Outputs(NamedTuple):
    """What a network computes for a batch of images."""

    logits: np.ndarray
    """Pixel logits (N, 1, H, W) float32."""
    presence: np.ndarray | None
    """Image-level presence logits (N,) float32, raw (uncalibrated); None for a network without a presence head."""


Predict = Callable[[np.ndarray], Outputs]
"""``predict(images (N, 1, H, W) float32) -> Outputs``."""

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
INT8_VARIANT = f"{DEPLOYABLE_NETWORK}_int8"
"""The int8 model's name in metrics, tables and figures: on its own, at the raw threshold."""
DEPLOYED = "deployed"
"""The deployable file's name in metrics, tables and figures: the int8 model scored with its threshold and
post-processing rule, as the runtime applies them."""

ACCURATE_FILE = "deploy/ultraseg.accurate.onnx"
"""The deployable file of the ``accurate`` profile: the teacher in fp32, with its own rule, for a machine that can
spend the teacher's time per frame."""
PROFILES: dict[str, str] = {"edge": DEPLOY_FILE, "accurate": ACCURATE_FILE}
"""Deployment profiles: a name users choose (``--profile``) and its deployable file, relative to the models
directory. ``edge`` is the small int8 network, ``accurate`` the teacher."""
DEFAULT_PROFILE = "edge"
PROFILE_SOURCES: dict[str, str] = {"edge": INT8_FILE, "accurate": onnx_file("teacher")}
"""The model file each profile's deployable file is made from."""
ACCURATE = "accurate"
"""The ``accurate`` profile's deployable file's name in metrics, tables and figures."""
PROFILE_NAMES: dict[str, str] = {"edge": DEPLOYED, "accurate": ACCURATE}
"""Each profile's deployable file's name in metrics, tables and figures."""


def profile_file(profile: str, models_dir: str | Path = "models") -> Path:
    """The deployable file of ``profile`` in ``models_dir``; an unknown profile raises ValueError naming it."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    return Path(models_dir) / PROFILES[profile]


INPUT = "input"
"""The name of every exported graph's input: images (N, 1, H, W) float32, normalised as the metadata says."""
OUTPUT = "logits"
"""The name of every exported graph's pixel output: logits (N, 1, H, W) float32."""
PRESENCE = "presence"
"""The name of the image-level output of a network with a presence head: raw logits (N, 1) float32."""


def session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU ONNX Runtime session with every graph optimisation; ``threads`` intra-op threads (None: ORT's choice,
    one per physical core)."""
    import onnxruntime as ort  # here, so that reading a file name does not load ONNX Runtime

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predictor(path: Path, threads: int | None = None) -> Predict:
    """The outputs of any ONNX file (fp32 or int8) in ONNX Runtime on the CPU, looked up by name (a deployable file
    also has the out-of-distribution ``features`` output, which is not asked for)."""
    sess = session(path, threads)
    names = [OUTPUT] + [PRESENCE] * any(o.name == PRESENCE for o in sess.get_outputs())

    def predict(images: np.ndarray) -> Outputs:
        got = sess.run(names, {INPUT: np.ascontiguousarray(images, dtype=np.float32)})
        return Outputs(got[0], got[1][:, 0] if len(got) > 1 else None)

    return predict
