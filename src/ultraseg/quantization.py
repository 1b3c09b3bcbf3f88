"""Static int8 quantisation of the exported ONNX model with ONNX Runtime, and what of it really runs in int8.

:func:`quantize` pre-processes the fp32 file (ONNX shape inference and ORT's basic graph optimisations), calibrates
activation ranges on already-normalised images fed one at a time by :class:`CalibrationReader`, writes the int8
file with the fp32 file's metadata plus a ``quantization`` entry, and reports which compute ops stayed float.

Which ops run in int8 is decided by ONNX Runtime when it loads the file, not by the quantiser: in QDQ format an op
is fused into an integer kernel (``QLinearConv``, ``QLinearConcat``, ...) or has its Q/DQ pair dropped (MaxPool,
nearest Resize, Reshape...) only when a fusion rule exists for it. Measured with ONNX Runtime 1.32 on x86-64, QDQ
leaves ``ConvTranspose``, linear ``Resize`` and ``Pad`` in float between a DequantizeLinear and a QuantizeLinear,
although they meet the "DQ in, Q out" pattern; QOperator format runs ``Pad`` and ``Resize`` directly on uint8.
So :func:`runtime_ops` reads the graph ORT actually builds (``ORT_ENABLE_EXTENDED``, the level of the QDQ
fusions, without the hardware-specific layout passes of ``ALL``) and follows which tensors are float from there.

The presence head (the image-level logit, :data:`ultraseg.runtime.model_files.PRESENCE`) stays float: it is a few
small layers at the bottleneck's resolution, so int8 would save nothing there, while an 8-bit grid over the
calibration range of the logit would move the answer near the operating point. :func:`presence_nodes` finds it
as the nodes only that output depends on.

Excluding a node does not always keep it float: ORT's ``WeightBiasQuantization`` pass quantises the float weights
of a Conv whose input comes from a DequantizeLinear and whose output feeds a QuantizeLinear, which is the case of
any Conv excluded by name between quantised neighbours. :func:`quantize` reports (and warns about) such nodes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from ultraseg.io import atomic_path
from ultraseg.params import QuantizeParams
from ultraseg.runtime.model_files import INPUT, OUTPUT, PRESENCE

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


class CalibrationReader(CalibrationDataReader):
    """Feeds normalised float32 images ``(N, H, W)`` one at a time as ``{"input": (1, 1, H, W)}``."""

    def __init__(self, images: np.ndarray) -> None:
        if images.ndim != 3 or len(images) == 0:
            raise ValueError(f"expected calibration images (N, H, W) with N >= 1, got shape {images.shape}")
        if images.dtype != np.float32:
            raise ValueError(f"expected normalised float32 images (see ultraseg.runtime.preprocess.normalize), "
                             f"got {images.dtype}")
        self.images = images
        self.position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= len(self.images):
            return None
        image = self.images[self.position]
        self.position += 1
        return {INPUT: np.ascontiguousarray(image[None, None])}

    def rewind(self) -> None:
        self.position = 0

    def __len__(self) -> int:
        return len(self.images)


# ---------------------------------------------------------------------------------------------------- quantize


def quantize(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray,
             params: QuantizeParams) -> dict[str, Any]:
    """Quantise the fp32 ONNX file statically to ``int8_path`` (atomically) and report on the result.

    ``calibration``: normalised float32 images (N, H, W); ``params.calibration_images`` of them, evenly spaced, are
    used. The report: ``fp32_bytes``, ``int8_bytes``, ``calibration_images``, ``calibration_seconds`` (the
    ``quantize_static`` call, of which calibration is nearly all), ``float_ops`` (op type -> count of compute ops
    that run on float tensors when ONNX Runtime loads the int8 file, see :func:`runtime_ops`) and
    ``conversions`` (QuantizeLinear/DequantizeLinear nodes left at run time) and ``excluded_but_int8``: excluded nodes
    that ORT quantises when it loads the file (a warning is issued for them, see the code).

    Raises:
        ValueError: invalid params or calibration images, or an ``exclude_nodes`` name absent from the graph.
    """
    params.validate("quantize")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    images = CalibrationReader(calibration).images
    picks = np.linspace(0, len(images) - 1, num=min(params.calibration_images, len(images))).round().astype(int)
    reader = CalibrationReader(images[np.unique(picks)])
    fp32 = onnx.load(str(fp32_path))
    with tempfile.TemporaryDirectory(prefix="ultraseg-quantize-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # ONNX shape inference only: ORT's symbolic pass cannot prove that a padded up-sampled map matches its
        # skip's size (floor(floor(h/2)/2)*2 + pad == floor(h/2)) and fails, leaving debug files in the cwd.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre), load_external_data=False).graph
        names = {node.name for node in graph.node}
        missing = [n for n in params.excluded_nodes() if n not in names]
        if missing:
            some = ", ".join(sorted(n.name for n in graph.node if n.op_type in _COMPUTE)[:8])
            raise ValueError(f"quantize.exclude_nodes: no node {missing[0]!r} in {fp32_path}; compute nodes "
                             f"include {some}")
        narrow = narrow_convs(graph, params.min_channels)
        head = presence_nodes(graph)
        skipped = sorted(set(params.excluded_nodes()) | set(narrow) | set(head))
        # ORT's own default when no op types are given: every op either format knows how to quantise
        quantizable = set(QDQRegistry) | set(QLinearOpsRegistry)
        excluded = set(params.excluded_op_types())
        start = time.perf_counter()
        with _quiet_shape_tensors():
            quantize_static(
                str(pre), str(out), reader,
                quant_format=FORMATS[params.format],
                op_types_to_quantize=sorted(quantizable - excluded),
                per_channel=params.per_channel,
                reduce_range=params.reduce_range,
                activation_type=TYPES[params.activation_type],
                weight_type=TYPES[params.weight_type],
                nodes_to_exclude=skipped or None,
                calibrate_method=METHODS[params.method],
                calibration_providers=["CPUExecutionProvider"],
            )
        seconds = time.perf_counter() - start
        int8 = onnx.load(str(out))
        details = dataclasses.asdict(params) | {"calibration_images": len(reader), "onnxruntime": ort.__version__}
        del int8.metadata_props[:]
        for prop in fp32.metadata_props:
            if prop.key != "quantization":
                int8.metadata_props.add(key=prop.key, value=prop.value)
        int8.metadata_props.add(key="quantization", value=json.dumps(details, sort_keys=True))
        with atomic_path(int8_path) as target:
            onnx.save_model(int8, str(target), save_as_external_data=False)
            onnx.checker.check_model(str(target), full_check=True)
            analysis = runtime_ops(target)
    asked = set(skipped) - set(head) | {node.name for node in graph.node if node.op_type in excluded}
    requantized = sorted(asked & set(analysis["int8_nodes"]))
    if requantized:
        warnings.warn(
            f"{int8_path}: ONNX Runtime runs {len(requantized)} excluded node(s) in int8 anyway ({requantized[0]}, "
            "...): its WeightBiasQuantization pass quantises the float weights of a Conv that sits between a "
            "DequantizeLinear and a QuantizeLinear. Exclude the op type, or load the model with "
            "disabled_optimizers=['WeightBiasQuantization'].",
            stacklevel=2,
        )
    return {
        "format": params.format,
        "fp32_bytes": fp32_path.stat().st_size,
        "int8_bytes": int8_path.stat().st_size,
        "calibration_images": len(reader),
        "calibration_seconds": round(seconds, 3),
        "float_ops": analysis["float_ops"],
        "int8_ops": analysis["int8_ops"],
        "conversions": analysis["conversions"],
        "excluded_but_int8": requantized,
        "narrow_convs_float": len(narrow),
        "presence_nodes_float": len(head),
    }


def presence_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that compute the ``presence`` output and nothing the ``logits`` need (none for a graph
    without a presence output)."""
    producer = {name: node for node in graph.node for name in node.output if name}

    def ancestors(output: str) -> set[str]:
        seen, todo = set(), [output]
        while todo:
            node = producer.get(todo.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                todo.extend(node.input)
        return seen

    outputs = {o.name for o in graph.output}
    if PRESENCE not in outputs:
        return []
    return sorted(ancestors(PRESENCE) - ancestors(OUTPUT))


def narrow_convs(graph: onnx.GraphProto, min_channels: int) -> list[str]:
    """Names of the Conv nodes whose weight initialiser has fewer than ``min_channels`` output channels."""
    weights = {init.name: init.dims for init in graph.initializer}
    return [node.name for node in graph.node
            if node.op_type == "Conv" and node.input[1] in weights and weights[node.input[1]][0] < min_channels]


class _ShapeTensorWarnings(logging.Filter):
    """Drops the warning ORT's quantiser logs for every int64 shape tensor it rightly leaves alone (the pad sizes
    computed from the input's shape); any other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        skipped = message.startswith("Inference failed or unsupported type to quantize")
        return not (skipped and "elem_type: 7" in message)  # 7: INT64


@contextlib.contextmanager
def _quiet_shape_tensors() -> Iterator[None]:
    root, quiet = logging.getLogger(), _ShapeTensorWarnings()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


# ---------------------------------------------------------------------------------------------------- analysis

_COMPUTE = {
    "Conv", "ConvTranspose", "FusedConv", "MatMul", "Gemm", "FusedMatMul", "Resize", "Upsample",
    "Add", "Sub", "Mul", "Div", "Sigmoid", "Relu", "LeakyRelu", "Clip", "Tanh", "Erf", "Gelu", "FastGelu",
    "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool", "NhwcMaxPool", "Pad", "Concat",
    "BatchNormalization", "InstanceNormalization", "GroupNormalization", "LayerNormalization", "Where",
}
"""Ops that read or write every element of an activation (shape-only ops such as Reshape are left out)."""
_QUANTIZED_OUT = {"QuantizeLinear", "DynamicQuantizeLinear"}
_FLOAT_OUT = {"DequantizeLinear"}
_META_OUT = {"Shape", "Size"}


def runtime_ops(path: str | Path) -> dict[str, Any]:
    """What ONNX Runtime (CPU, ``ORT_ENABLE_EXTENDED``) runs for the model at ``path``, by tensor type.

    Tensors are followed from the graph inputs: a QuantizeLinear or ``QLinear*``/``*Integer`` output is
    quantised, a DequantizeLinear output is float, Shape/Size outputs are metadata, and any other op passes on the
    kind of its first activation input (MaxPool on uint8 stays uint8). Returns ``float_ops``: compute ops (see
    ``_COMPUTE``) with a float activation input; ``int8_ops``: ops on quantised activations other than Q/DQ;
    ``conversions``: the QuantizeLinear and DequantizeLinear nodes left to run (around float islands, and on the
    int8 weights of float ops); ``int8_nodes``: the names of the int8 nodes.
    """
    with tempfile.TemporaryDirectory(prefix="ultraseg-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        # Float Conv + Relu would become one FusedConv; keeping them apart keeps the file's op names, and the
        # fusion decides nothing about int8.
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["ConvActivationFusion"])
        graph = onnx.load(str(optimized)).graph
    kind: dict[str, str] = {}
    for value in graph.input:
        is_float = value.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
        kind[value.name] = "float" if is_float else "meta"
    float_ops: collections.Counter[str] = collections.Counter()
    int8_ops: collections.Counter[str] = collections.Counter()
    conversions: collections.Counter[str] = collections.Counter()
    int8_nodes = []
    for node in _topological(graph):
        inputs = [kind[name] for name in node.input if name in kind]
        activation = next((k for k in inputs if k in ("float", "quant")), None)
        if node.op_type in _QUANTIZED_OUT or node.op_type in _FLOAT_OUT:
            conversions[node.op_type] += 1
            out = "quant" if node.op_type in _QUANTIZED_OUT else "float"
        elif node.op_type.startswith("QLinear") or node.op_type.endswith("Integer"):
            int8_ops[node.op_type] += 1
            int8_nodes.append(node.name)  # a fused node keeps the name of the op it replaced
            out = "quant"
        elif node.op_type in _META_OUT or activation is None:
            out = "meta"
        else:
            out = activation
            if "float" in inputs and node.op_type in _COMPUTE:
                float_ops[node.op_type] += 1
            elif activation == "quant":
                int8_ops[node.op_type] += 1
                int8_nodes.append(node.name)
        for name in node.output:
            kind[name] = out
    return {"float_ops": dict(sorted(float_ops.items())), "int8_ops": dict(sorted(int8_ops.items())),
            "conversions": dict(sorted(conversions.items())), "int8_nodes": sorted(int8_nodes)}


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of ``graph``, producers before consumers (Kahn's algorithm, stable in file order)."""
    producer = {name: k for k, node in enumerate(graph.node) for name in node.output if name}
    consumers: dict[int, list[int]] = collections.defaultdict(list)
    waiting = []
    for k, node in enumerate(graph.node):
        parents = {producer[name] for name in node.input if name in producer}
        waiting.append(len(parents))
        for parent in parents:
            consumers[parent].append(k)
    ready = collections.deque(k for k, count in enumerate(waiting) if count == 0)
    order = []
    while ready:
        k = ready.popleft()
        order.append(graph.node[k])
        for child in consumers[k]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(order) != len(graph.node):
        raise ValueError("the optimised graph has a cycle")
    return order


# ---------------------------------------------------------------------------------------------------- latency
