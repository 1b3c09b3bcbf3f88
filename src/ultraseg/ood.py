"""The training side of the out-of-distribution check (:mod:`ultraseg.runtime.ood`): expose a trained network's
deepest features as a second graph output, and fit the training scans' Gaussians over them and over the frames' own
statistics, with scanner-shifted copies of the scans. No retraining.

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

from ultraseg import shifts
from ultraseg.io import atomic_path
from ultraseg.runtime.ood import FEATURES, STATS, STATS_VERSION, Gaussian, OodCheck

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


def gaussian(x: np.ndarray, shrinkage: float) -> Gaussian:
    """The Gaussian of the rows of ``x``: each column standardised, the correlation matrix shrunk by ``shrinkage``
    towards the identity (a few hundred scans against more dimensions; standardising first keeps a column of large
    values from setting every column's floor), and ``scale`` the mean squared distance of the rows themselves."""
    mean, sd = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-9)
    corr = np.cov((x - mean) / sd, rowvar=False).reshape(len(mean), len(mean))
    corr = (1 - shrinkage) * corr + shrinkage * np.eye(len(mean))
    whiten = np.linalg.inv(np.linalg.cholesky(corr)) / sd
    return Gaussian(mean, whiten, float(np.mean(np.sum(((x - mean) @ whiten.T) ** 2, axis=1))))


def fit(train: Sequence[np.ndarray], val: Sequence[np.ndarray], val_pass: float, shrinkage: float,
        min_side: int, train_stats: Sequence[np.ndarray] | None = None,
        val_stats: Sequence[np.ndarray] | None = None) -> dict:
    """The ``ood`` metadata: the Gaussian (:func:`gaussian`) of the ``train`` feature vectors and, given
    ``train_stats`` and ``val_stats`` (:func:`~ultraseg.runtime.ood.frame_stats` of the same scans), the one of
    the frame statistics, and the smallest threshold at which at least ``val_pass`` of the ``val`` scans pass."""
    x = np.asarray(train, np.float64)
    if len(x) < 2 or not len(val):
        raise ValueError(f"fitting the out-of-distribution check needs >= 2 train and >= 1 val scans, got "
                         f"{len(x)} and {len(val)}")
    deep = gaussian(x, shrinkage)
    stats = None if train_stats is None else gaussian(np.asarray(train_stats, np.float64), shrinkage)
    check = OodCheck(mean=deep.mean, whiten=deep.whiten, threshold=math.inf, scale=deep.scale, stats=stats)
    if stats is None:
        distances = np.sort([check.distance(f) for f in val])
    else:
        squared = [deep.squared(f) + stats.squared(s) for f, s in zip(val, val_stats, strict=True)]
        distances = np.sort(np.sqrt(squared))
    threshold = float(distances[math.ceil(val_pass * len(distances)) - 1])
    meta = deep.to_meta() | {"threshold": threshold, "min_side": min_side}
    if stats is not None:
        meta["frame_stats"] = stats.to_meta() | {"version": STATS_VERSION, "names": list(STATS)}
    return meta


def augmented_copies(images: Sequence[np.ndarray], copies: int, seed: int) -> list[np.ndarray]:
    """``copies`` scanner-like copies of each uint8 scan: each one scanner shift (:mod:`ultraseg.shifts`: gain,
    depth gain, dynamic range, speckle, blur, resolution, zoom, aspect, JPEG, marks, field of view) at a severity,
    both drawn at random, so that the fit also covers the breast frames another scanner would give. Copy ``c`` of
    scan ``i`` depends only on ``(seed, c, i)``."""
    out = []
    for c in range(copies):
        for i, image in enumerate(images):
            rng = np.random.default_rng([seed, c, i])
            shift = shifts.SHIFTS[int(rng.integers(len(shifts.SHIFTS)))]
            severity = shifts.SEVERITIES[int(rng.integers(len(shifts.SEVERITIES)))]
            scan = np.asarray(image, np.uint8)
            out.append(shifts.apply(shift, severity, scan, np.zeros(scan.shape, bool), seed, c * len(images) + i)[0])
    return out
