"""Export a network to ONNX, read the metadata back, and check that the file computes what the model does.

The exported graph takes ``input`` (N, 1, H, W) float32 — images already normalised with
:func:`ultraseg.runtime.preprocess.normalize` — and returns ``logits`` (N, 1, H, W), with N, H and W dynamic
(``dim_param`` ``batch``, ``height``, ``width``), and, for a network with a presence head, ``presence`` (N, 1):
the raw image-level logit. Everything a deployment needs to reproduce the pipeline travels
inside the file as ``metadata_props`` (values JSON-encoded): preprocessing params, input size, normalisation,
decision threshold, model config. The file is self-contained: weights are stored inline, never as external data.

Exporters (``ExportParams.exporter``):

- ``dynamo`` (torch >= 2.9's default): ``torch.export`` then onnxscript. Dynamic sizes come from
  ``torch.export.Dim``; export fails loudly if the model branches on a size (which is why
  :func:`ultraseg.models.blocks.pad_to` always pads). Its optimiser folds BatchNorm into the convolutions. It has
  no translations below opset 18 and, asked for 17, quietly keeps 18: :func:`export` rejects that.
- ``torchscript``: the legacy tracer with ``dynamic_axes``, opset 17-20; kept as a fallback and for comparison.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ultraseg.io import atomic_path
from ultraseg.params import ExportParams
from ultraseg.models import split_outputs
from ultraseg.runtime.model_files import INPUT, OUTPUT, PRESENCE, session

DYNAMIC_DIMS = {0: "batch", 2: "height", 3: "width"}
"""Axis -> ``dim_param`` of the input and the logits."""
PRESENCE_DIMS = {0: "batch"}
"""Axis -> ``dim_param`` of the presence output."""
EXAMPLE_SIZE = 64
"""Side of the example input traced at export when the metadata has no ``size``; any size works."""
PARITY_SEED = 0


class ParityError(RuntimeError):
    """The ONNX file's output differs from the PyTorch model's by more than the tolerance."""


# ---------------------------------------------------------------------------------------------------- export


def export(model: nn.Module, path: str | Path, params: ExportParams, metadata: Mapping[str, Any]) -> None:
    """Export ``model`` (in eval mode) to the self-contained ONNX file ``path``, atomically.

    ``metadata`` values (str, int, float, or lists and dicts of them) are stored JSON-encoded in the model's
    ``metadata_props``; an integer ``size`` (the training input side) is also the traced example's size. The file
    is checked with ``onnx.checker.check_model(full_check=True)`` before it is moved into place.

    Raises:
        ValueError: invalid params, or metadata that is not JSON-encodable.
        RuntimeError: the exporter wrote another opset, or a graph whose N, H or W is not dynamic.
    """
    params.validate("export")
    props = _encode_metadata(metadata)
    size = metadata.get("size")
    side = size if type(size) is int and size > 0 else EXAMPLE_SIZE
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        example = torch.zeros(2, _in_channels(model), side, side, device=device)  # batch 2: 0 and 1 specialise
        outputs = output_names(model, example)
        if params.exporter == "dynamo":
            proto = _export_dynamo(model, example, params.opset, outputs)
        else:
            proto = _export_torchscript(model, example, params.opset, outputs)
    finally:
        model.train(was_training)
    _check_interface(proto, params.opset, outputs)
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)


def output_names(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The graph outputs of ``model``: ``logits``, and ``presence`` when its forward also gives a presence logit."""
    with torch.no_grad():
        _, presence = split_outputs(model(example))
    return [OUTPUT] if presence is None else [OUTPUT, PRESENCE]


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int, outputs: list[str]) -> onnx.ModelProto:
    dims = {axis: torch.export.Dim(name) for axis, name in DYNAMIC_DIMS.items()}
    with warnings.catch_warnings():
        # torch 2.13's own pytree use, not ours
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, input_names=[INPUT], output_names=outputs,
            opset_version=opset, dynamic_shapes=(dims,), external_data=False, optimize=True, verbose=False,
        )
    proto = program.model_proto
    # Per-node debugging records (FX node, module path, Python stack trace) are larger than the weights of a small
    # network and name local source paths; the deployable file does not need them.
    for node in proto.graph.node:
        del node.metadata_props[:]
    for info in proto.graph.value_info:
        del info.metadata_props[:]
    return proto


def _export_torchscript(model: nn.Module, example: torch.Tensor, opset: int, outputs: list[str]) -> onnx.ModelProto:
    axes = {INPUT: DYNAMIC_DIMS, OUTPUT: DYNAMIC_DIMS, PRESENCE: PRESENCE_DIMS}
    axes = {name: dims for name, dims in axes.items() if name in (INPUT, *outputs)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r"The feature will be removed.*", category=DeprecationWarning)
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, input_names=[INPUT], output_names=outputs,
            opset_version=opset, dynamic_axes=axes,
        )
    return onnx.load_from_string(buffer.getvalue())


def _check_interface(proto: onnx.ModelProto, opset: int, outputs: list[str]) -> None:
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise RuntimeError(f"asked for opset {opset}, the exporter wrote {written}")
    for kind, values, names in (("input", proto.graph.input, [INPUT]), ("output", proto.graph.output, outputs)):
        if [v.name for v in values] != names:
            raise RuntimeError(f"expected graph {kind}s {names}, got {[v.name for v in values]}")
        for value in values:
            dims = value.type.tensor_type.shape.dim
            for axis in PRESENCE_DIMS if value.name == PRESENCE else DYNAMIC_DIMS:
                if not dims[axis].dim_param:
                    raise RuntimeError(f"{kind} {value.name!r} axis {axis} is fixed at {dims[axis].dim_value}, "
                                       "not dynamic")


def _in_channels(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))), None)
    if first is None:
        raise ValueError(f"{type(model).__name__} has no convolution to infer its input channels from")
    return first.in_channels


def _encode_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    props = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata keys must be non-empty strings, got {key!r}")
        try:
            props[key] = json.dumps(value, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"metadata {key!r}: not JSON-encodable ({err})") from None
    return props


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, JSON-decoded (the inverse of what :func:`export` writes)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: json.loads(p.value) for p in proto.metadata_props}


def write_with_metadata(src: str | Path, dst: str | Path, updates: Mapping[str, Any]) -> None:
    """Copy the ONNX file ``src`` to ``dst`` (atomically) with ``updates`` merged into its metadata."""
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props} | _encode_metadata(updates)
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_path(dst) as tmp:
        onnx.save(proto, str(tmp))


# ---------------------------------------------------------------------------------------------------- running


def parity(model: nn.Module, path: str | Path, params: ExportParams) -> dict[str, Any]:
    """Compare ``model`` with the ONNX file ``path`` under ONNX Runtime (CPU) on seeded standard-normal inputs.

    Inputs: ``(2, C, parity_height, parity_width)`` and, when the file's metadata has an integer ``size``,
    ``(1, C, size, size)``. Every output is compared: the logits and, for a network with a presence head, the
    presence logit. Returns the shapes checked, the outputs compared, ``max_abs`` and ``max_rel`` (relative to
    ``|torch|``, over values with ``|torch| > atol``) differences, and ``tolerance_used``: the largest
    ``|diff| / (atol + rtol * |torch|)``, which must stay <= 1.

    Raises:
        ParityError: a missing output, an output of the wrong shape, a non-finite output, or a difference outside
            the tolerance; the message names the file and the numbers.
    """
    params.validate("export")
    size = read_metadata(path).get("size")
    channels = _in_channels(model)
    shapes = [(2, channels, params.parity_height, params.parity_width)]
    if type(size) is int and size > 0:
        shapes.append((1, channels, size, size))
    sess = session(path)
    rng = np.random.default_rng(PARITY_SEED)
    device = next(model.parameters()).device
    worst = {"max_abs": 0.0, "max_rel": 0.0, "used": 0.0}
    was_training = model.training
    model.eval()
    try:
        for shape in shapes:
            x = rng.standard_normal(shape, dtype=np.float32)
            with torch.no_grad():
                logits, presence = split_outputs(model(torch.from_numpy(x).to(device)))
            want = {OUTPUT: logits} | ({} if presence is None else {PRESENCE: presence})
            names = [o.name for o in sess.get_outputs()]
            if any(name not in names for name in want):
                raise ParityError(f"{path}: the file's outputs {names} lack one of the model's {list(want)}")
            got = sess.run(list(want), {INPUT: x})
            for (name, expected), value in zip(want.items(), got):
                _compare(path, name, "x".join(map(str, shape)), value, expected.float().cpu().numpy(), params, worst)
    finally:
        model.train(was_training)
    return {"file": str(path), "shapes": ["x".join(map(str, s)) for s in shapes],
            "outputs": [OUTPUT] + [PRESENCE] * (presence is not None), "max_abs": worst["max_abs"],
            "max_rel": worst["max_rel"], "tolerance_used": worst["used"], "rtol": params.rtol, "atol": params.atol}


def _compare(path: str | Path, name: str, label: str, got: np.ndarray, want: np.ndarray, params: ExportParams,
             worst: dict[str, float]) -> None:
    """Check one output against PyTorch's, updating ``worst``; raise :class:`ParityError` outside the tolerance."""
    if got.shape != want.shape:
        raise ParityError(f"{path}: at input {label} ONNX gives {name} {got.shape}, PyTorch {want.shape}")
    if not np.isfinite(got).all():
        raise ParityError(f"{path}: at input {label} ONNX gives non-finite {name}")
    diff = np.abs(got.astype(np.float64) - want)
    scale = np.abs(want.astype(np.float64))
    worst["max_abs"] = max(worst["max_abs"], float(diff.max()))
    big = scale > params.atol
    if big.any():
        worst["max_rel"] = max(worst["max_rel"], float((diff[big] / scale[big]).max()))
    worst["used"] = max(worst["used"], float((diff / (params.atol + params.rtol * scale)).max()))
    if worst["used"] > 1:
        raise ParityError(
            f"{path}: ONNX Runtime and PyTorch disagree on {name} at input {label}: max |diff| "
            f"{worst['max_abs']:.3g}, max rel {worst['max_rel']:.3g}, {worst['used']:.3g}x the tolerance "
            f"atol={params.atol:g} + rtol={params.rtol:g} * |torch|; the file does not match this model"
        )
