"""The quantize stage's work on the tiny zoo: the int8 file of the deployable network, calibrated on train images,
scored against its fp32 source on val, and timed; a summary whose numbers agree with the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ultraseg import onnx_io, quantization
from ultraseg.io import read_csv
from ultraseg.pipeline import quantize
from ultraseg.runtime.model_files import DEPLOYABLE_NETWORK, INT8_FILE, onnx_file
from tests.conftest import shipped_params, train_val_split

SUMMARY_KEYS = {
    "fp32_bytes", "int8_bytes", "size_ratio", "val_dice_fp32", "val_dice_int8", "val_dice_drop",
    "calibration_images", "calibration_seconds", "float_ops", "int8_ops", "narrow_convs_float", "input_size",
    "latency_p50_ms_1thread", "speedup_int8_vs_fp32", "speedup_int8_vs_teacher_onnx",
    "speedup_int8_vs_teacher_eager", "torch_threads_during_timing", "threads_available",
    "val_presence_max_abs_diff", "presence_nodes_float",
}


def n_rows(split_csv: Path, split: str) -> int:
    return sum(r["split"] == split for r in read_csv(split_csv))


@pytest.fixture(scope="module")
def quantized(zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize")
    split = train_val_split(zoo, root / "split.csv")
    params = shipped_params({"preprocess": {"size": zoo.size},
                            "quantize": {"calibration_images": 4, "min_channels": 0}})
    out = root / "models" / INT8_FILE
    summary = quantize.quantize_deployable(params, zoo.models / "onnx", zoo.models, zoo.data, split, out)
    return params, split, out, summary


def test_summary_keys(quantized):
    *_, summary = quantized
    assert set(summary) == SUMMARY_KEYS
    assert set(summary["latency_p50_ms_1thread"]) == {"int8", "fp32", "teacher_onnx_fp32", "teacher_eager"}
    assert all(v > 0 for v in summary["latency_p50_ms_1thread"].values())
    assert summary["torch_threads_during_timing"] == 1
    assert summary["val_presence_max_abs_diff"] is None and summary["presence_nodes_float"] == 0  # no head in the zoo
    json.dumps(summary, allow_nan=False)  # what the stage writes to metrics/quantize.json


def test_int8_file_and_sizes(zoo, quantized):
    _, _, out, summary = quantized
    fp32 = zoo.models / onnx_file(DEPLOYABLE_NETWORK)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    assert summary["int8_bytes"] == out.stat().st_size
    assert summary["fp32_bytes"] == fp32.stat().st_size
    assert summary["size_ratio"] == round(summary["fp32_bytes"] / summary["int8_bytes"], 2)
    assert summary["input_size"] == zoo.size
    # the int8 file carries its source's metadata, so it deploys on its own
    stored = onnx_io.read_metadata(out)
    assert {k: stored[k] for k in ("kind", "size", "threshold", "normalize")} == \
        {"kind": "pruned", "size": zoo.size, "threshold": 0.5, "normalize": "zscore"}


def test_calibrated_on_the_train_images(quantized):
    _, split, _, summary = quantized
    assert n_rows(split, "train") > 4  # so the param, not the split, sets the count
    assert summary["calibration_images"] == 4
    assert summary["calibration_seconds"] >= 0


def test_every_conv_quantized_with_min_channels_zero(quantized):
    *_, summary = quantized
    assert summary["narrow_convs_float"] == 0
    assert summary["int8_ops"].get("QLinearConv", 0) > 0
    assert "Conv" not in summary["float_ops"]


def test_narrow_convs_stay_float_by_default(zoo, tmp_path, monkeypatch):
    """With the default min_channels (16) every conv of the zoo's 4- and 8-channel network stays float."""
    monkeypatch.setattr(quantize.timing, "compare", lambda runners: {name: 1.0 for name in runners})
    split = train_val_split(zoo, tmp_path / "split.csv")
    params = shipped_params({"preprocess": {"size": zoo.size}, "quantize": {"calibration_images": 2}})
    summary = quantize.quantize_deployable(params, zoo.models / "onnx", zoo.models, zoo.data, split,
                                           tmp_path / INT8_FILE)
    assert summary["narrow_convs_float"] > 0
    assert summary["float_ops"].get("Conv", 0) > 0


def test_val_dice_of_fp32_and_int8(quantized):
    *_, summary = quantized
    for key in ("val_dice_fp32", "val_dice_int8"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["val_dice_drop"] == pytest.approx(summary["val_dice_fp32"] - summary["val_dice_int8"], abs=2e-4)


def test_speedups_are_ratios_of_the_latencies(quantized):
    *_, summary = quantized
    p50 = summary["latency_p50_ms_1thread"]
    for key, other in (("speedup_int8_vs_fp32", "fp32"), ("speedup_int8_vs_teacher_onnx", "teacher_onnx_fp32"),
                       ("speedup_int8_vs_teacher_eager", "teacher_eager")):
        # the ratios of the reported (rounded) p50s, rounded to 0.01
        assert summary[key] == pytest.approx(p50[other] / p50["int8"], rel=0, abs=0.0051), key


def test_calibration_images_come_from_the_train_split(zoo, tmp_path, monkeypatch):
    seen = []
    real = quantization.quantize

    def recording(fp32, int8, calibration, params):
        seen.append(calibration.shape)
        return real(fp32, int8, calibration, params)

    monkeypatch.setattr(quantization, "quantize", recording)
    monkeypatch.setattr(quantize.timing, "compare", lambda runners: {name: 1.0 for name in runners})
    split = train_val_split(zoo, tmp_path / "split.csv")
    params = shipped_params({"preprocess": {"size": zoo.size}, "quantize": {"calibration_images": 2}})
    summary = quantize.quantize_deployable(params, zoo.models / "onnx", zoo.models, zoo.data, split,
                                           tmp_path / INT8_FILE)
    assert seen == [(n_rows(split, "train"), zoo.size, zoo.size)]
    assert summary["calibration_images"] == 2
    assert summary["speedup_int8_vs_fp32"] == 1.0


def test_a_missing_fp32_file_names_it(zoo, tmp_path):
    split = train_val_split(zoo, tmp_path / "split.csv")
    params = shipped_params({"preprocess": {"size": zoo.size}})
    with pytest.raises(FileNotFoundError) as err:  # the stage script reports it in one line
        quantize.quantize_deployable(params, tmp_path / "no_onnx", zoo.models, zoo.data, split, tmp_path / "x.onnx")
    assert str(tmp_path / "no_onnx" / "pruned.onnx") in str(err.value)
    assert not (tmp_path / "x.onnx").exists()
