"""The training side of the out-of-distribution check (:mod:`ultraseg.runtime.ood`): expose a trained network's
deepest features as a second graph output, and fit the training scans' Gaussian over them. No retraining.

:func:`add_features` finds the deepest feature map, the data input of the first upsampling node (``Resize`` or
``ConvTranspose``) in the graph's topological order, and pools it into ``features`` (N, K): per channel, the mean and
standard deviation over H and W of the input of the last ``InstanceNormalization`` before that node (per-image
normalisation would erase these statistics, which say most about how a frame differs from a scan), and the maximum
over H and W of the deepest map itself. Without an ``InstanceNormalization`` the first two are taken on the deepest
map. The ``logits`` output is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ultraseg.io import atomic_path
from ultraseg.runtime.ood import FEATURES, OodCheck

UPSAMPLING = ("Resize", "ConvTranspose")
PREFIX = "ood_"
"""Prefix of the names of every node and tensor :func:`add_features` adds."""


def feature_taps(graph: onnx.GraphProto) -> tuple[str, str]:
    """(tensor whose mean and std are pooled, deepest tensor whose max is pooled); a graph without an upsampling
    node raises ValueError."""
    last_norm = None
    for node in graph.node:
        if node.op_type in UPSAMPLING:
            return (last_norm or node.input[0]), node.input[0]
        if node.op_type == "InstanceNormalization":
            last_norm = node.input[0]
    raise ValueError(f"no {' or '.join(UPSAMPLING)} node: cannot find the deepest features of this graph")


def add_features(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` with the ``features`` output (see the module docstring); one that already has it is
    returned unchanged."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    if FEATURES in (o.name for o in graph.output):
        return out
    stats, deepest = feature_taps(graph)
    opset = next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx"))
    graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), f"{PREFIX}axes"))
    nodes = [*_reduce("ReduceMean", stats, f"{PREFIX}mean_k", 1, opset),
             helper.make_node("Sub", [stats, f"{PREFIX}mean_k"], [f"{PREFIX}centred"], name=f"{PREFIX}sub"),
             helper.make_node("Mul", [f"{PREFIX}centred"] * 2, [f"{PREFIX}sq"], name=f"{PREFIX}sq"),
             *_reduce("ReduceMean", f"{PREFIX}sq", f"{PREFIX}var", 0, opset),
             helper.make_node("Sqrt", [f"{PREFIX}var"], [f"{PREFIX}std"], name=f"{PREFIX}sqrt"),
             *_reduce("ReduceMean", stats, f"{PREFIX}mean", 0, opset),
             *_reduce("ReduceMax", deepest, f"{PREFIX}max", 0, opset),
             helper.make_node("Concat", [f"{PREFIX}mean", f"{PREFIX}std", f"{PREFIX}max"], [FEATURES], axis=1,
                              name=f"{PREFIX}concat")]
    graph.node.extend(nodes)
    graph.output.append(helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", None]))
    onnx.checker.check_model(out)
    return out


def _reduce(op: str, x: str, y: str, keepdims: int, opset: int) -> list[onnx.NodeProto]:
    # opset 18 moved ReduceMean's axes from an attribute to an input (ReduceMax's as well)
    if opset >= 18:
        return [helper.make_node(op, [x, f"{PREFIX}axes"], [y], keepdims=keepdims, name=y)]
    return [helper.make_node(op, [x], [y], axes=[2, 3], keepdims=keepdims, name=y)]


def write_with_features(src: str | Path, dst: str | Path) -> None:
    """Copy the ONNX file ``src`` to ``dst`` (atomically) with the ``features`` output added."""
    proto = add_features(onnx.load(str(src)))
    with atomic_path(dst) as tmp:
        onnx.save(proto, str(tmp))


def fit(train: Sequence[np.ndarray], val: Sequence[np.ndarray], val_pass: float, shrinkage: float,
        min_side: int) -> dict:
    """The ``ood`` metadata: the Gaussian of the ``train`` feature vectors, its covariance shrunk by ``shrinkage``
    towards its mean variance (a few hundred scans against more dimensions), and the smallest threshold at which at
    least ``val_pass`` of the ``val`` vectors pass."""
    x = np.asarray(train, np.float64)
    if len(x) < 2 or not len(val):
        raise ValueError(f"fitting the out-of-distribution check needs >= 2 train and >= 1 val scans, got "
                         f"{len(x)} and {len(val)}")
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False).reshape(len(mean), len(mean))
    scale = max(float(np.trace(cov)) / len(mean), 1e-12)
    cov = (1 - shrinkage) * cov + shrinkage * scale * np.eye(len(mean))
    whiten = np.linalg.inv(np.linalg.cholesky(cov))
    check = OodCheck(mean=mean, whiten=whiten, threshold=math.inf)
    distances = np.sort([check.distance(f) for f in val])
    threshold = float(distances[math.ceil(val_pass * len(distances)) - 1])
    return {"mean": mean.tolist(), "whiten": whiten.tolist(), "threshold": threshold, "min_side": min_side}
