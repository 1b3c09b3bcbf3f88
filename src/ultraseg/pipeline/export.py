"""The export stage's work: an ONNX file of every model variant, each checked against its PyTorch model.

Each ONNX file carries its checkpoint's metadata (:mod:`ultraseg.metadata`) plus the hash of the export params, so a
deployment needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

from ultraseg import checkpoint, onnx_io, params as params_mod
from ultraseg.models.registry import count_macs, count_parameters
from ultraseg.params import Params
from ultraseg.runtime.model_files import NETWORKS, checkpoint_file, onnx_file


def export_all(params: Params, models_dir: Path, out_dir: Path) -> dict:
    """Export every variant to ``out_dir/<name>.onnx``; the stage fails if a file does not match its model."""
    summary = {}
    for name in NETWORKS:
        model, meta = checkpoint.load(models_dir / checkpoint_file(name))
        path = out_dir / Path(onnx_file(name)).name
        onnx_io.export(model, path, params.export, meta | {"params_hash": params_mod.digest(params.export)})
        check = onnx_io.parity(model, path, params.export)
        summary[name] = {
            "bytes": path.stat().st_size, "params": count_parameters(model),
            "gmacs": round(count_macs(model, meta["size"]) / 1e9, 4),
            "parity_max_abs": float(f"{check['max_abs']:.3g}"), "parity_max_rel": float(f"{check['max_rel']:.3g}"),
            "parity_shapes": check["shapes"],
        }
        print(f"export: {name} -> {path} ({summary[name]['bytes'] / 1e6:.2f} MB, max |diff| {check['max_abs']:.2g})")
    return {"opset": params.export.opset, "exporter": params.export.exporter, "rtol": params.export.rtol,
            "atol": params.export.atol, **summary}
