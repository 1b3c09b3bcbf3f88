"""The export and quantize stages' work: ONNX files of every model variant, and the int8 deployable model.

Each ONNX file carries its checkpoint's metadata (model config and pruned widths, preprocessing params and
normalisation, input size, threshold, kind, and ``run_id``: the hash of the params and data that trained it) plus
the hash of the export params, so a deployment needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ultraseg import bench, checkpoint, metrics, onnx_io, params as params_mod, quantize
from ultraseg.data.dataset import load_split
from ultraseg.models.registry import count_macs, count_parameters
from ultraseg.params import Params
from ultraseg.variants import onnx_predictor, probabilities

VARIANTS = {"teacher": "teacher.pt", "student": "student.pt", "pruned": "pruned.pt"}
DEPLOYABLE = "pruned"


def export_all(params: Params, models_dir: Path, out_dir: Path) -> dict:
    """Export every variant to ``out_dir/<name>.onnx``; the stage fails if a file does not match its model."""
    summary = {}
    for name, filename in VARIANTS.items():
        model, meta = checkpoint.load(models_dir / filename)
        path = out_dir / f"{name}.onnx"
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


def quantize_deployable(params: Params, onnx_dir: Path, models_dir: Path, data_dir: Path, split_csv: Path,
                        out: Path) -> dict:
    """Calibrate on train images, quantize, score fp32 vs int8 on val, and time both against the teacher."""
    mode, size = params.preprocess.normalize, params.preprocess.size
    calibration, _, _ = load_split(data_dir, split_csv, "train", mode)
    fp32 = onnx_dir / f"{DEPLOYABLE}.onnx"
    report = quantize.quantize(fp32, out, calibration, params.quantize)
    threshold = onnx_io.read_metadata(fp32)["threshold"]
    val_x, val_y, _ = load_split(data_dir, split_csv, "val", mode)
    dice = {name: metrics.summarize(probabilities(onnx_predictor(path), val_x) > threshold, val_y > 0)["dice"]
            for name, path in (("fp32", fp32), ("int8", out))}
    shape = (1, 1, size, size)
    teacher, _ = checkpoint.load(models_dir / VARIANTS["teacher"])
    p50 = bench.compare({
        "int8": bench.onnx_runner(out, shape), "fp32": bench.onnx_runner(fp32, shape),
        "teacher_onnx_fp32": bench.onnx_runner(onnx_dir / "teacher.onnx", shape),
        "teacher_eager": bench.torch_runner(teacher, shape),
    })
    return {
        "fp32_bytes": report["fp32_bytes"], "int8_bytes": report["int8_bytes"],
        "size_ratio": round(report["fp32_bytes"] / report["int8_bytes"], 2),
        "val_dice_fp32": round(dice["fp32"], 4), "val_dice_int8": round(dice["int8"], 4),
        "val_dice_drop": round(dice["fp32"] - dice["int8"], 4),
        "calibration_images": report["calibration_images"],
        "calibration_seconds": round(report["calibration_seconds"], 2),
        "float_ops": report["float_ops"], "int8_ops": report["int8_ops"],
        "narrow_convs_float": report["narrow_convs_float"],
        "input_size": size, "latency_p50_ms_1thread": p50,
        "speedup_int8_vs_fp32": round(p50["fp32"] / p50["int8"], 2),
        "speedup_int8_vs_teacher_onnx": round(p50["teacher_onnx_fp32"] / p50["int8"], 2),
        "speedup_int8_vs_teacher_eager": round(p50["teacher_eager"] / p50["int8"], 2),
        "torch_threads_during_timing": 1, "threads_available": torch.get_num_threads(),
    }
