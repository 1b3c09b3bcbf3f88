"""The quantize stage's work: the int8 deployable model, calibrated on train images, scored against its fp32
source on val (lesion Dice and, for a network with a presence output, how far int8 moves the presence logit), and
timed against the teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ultraseg import checkpoint, metrics, onnx_io, quantization, timing
from ultraseg.data.dataset import load_split
from ultraseg.params import Params
from ultraseg.runtime.model_files import DEPLOYABLE_NETWORK, checkpoint_file, onnx_file, onnx_predictor
from ultraseg.variants import probabilities


def quantize_deployable(params: Params, onnx_dir: Path, models_dir: Path, data_dir: Path, split_csv: Path,
                        out: Path) -> dict:
    """Calibrate on train images, quantize, score fp32 vs int8 on val, and time both against the teacher."""
    mode, size = params.preprocess.normalize, params.preprocess.size
    calibration, _, _ = load_split(data_dir, split_csv, "train", mode)
    fp32 = onnx_dir / Path(onnx_file(DEPLOYABLE_NETWORK)).name
    report = quantization.quantize(fp32, out, calibration, params.quantize)
    threshold = onnx_io.read_metadata(fp32)["threshold"]
    val_x, val_y, _ = load_split(data_dir, split_csv, "val", mode)
    outputs = {name: probabilities(onnx_predictor(path), val_x) for name, path in (("fp32", fp32), ("int8", out))}
    dice = {name: metrics.summarize(probs > threshold, val_y > 0)["dice"] for name, (probs, _) in outputs.items()}
    presence = {name: logits for name, (_, logits) in outputs.items()}
    shape = (1, 1, size, size)
    teacher, _ = checkpoint.load(models_dir / checkpoint_file("teacher"))
    p50 = timing.compare({
        "int8": timing.onnx_runner(out, shape), "fp32": timing.onnx_runner(fp32, shape),
        "teacher_onnx_fp32": timing.onnx_runner(onnx_dir / Path(onnx_file("teacher")).name, shape),
        "teacher_eager": timing.torch_runner(teacher, shape),
    })
    return {
        "fp32_bytes": report["fp32_bytes"], "int8_bytes": report["int8_bytes"],
        "size_ratio": round(report["fp32_bytes"] / report["int8_bytes"], 2),
        "val_dice_fp32": round(dice["fp32"], 4), "val_dice_int8": round(dice["int8"], 4),
        "val_dice_drop": round(dice["fp32"] - dice["int8"], 4),
        "val_presence_max_abs_diff": None if presence["fp32"] is None
        else round(float(np.abs(presence["int8"] - presence["fp32"]).max()), 4),
        "presence_nodes_float": report["presence_nodes_float"],
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
