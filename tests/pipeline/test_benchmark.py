"""The benchmark stage's work on tiny models: every variant is measured, and disturbance is detected and retried.
The stage's outputs (metrics, trade-off table and figures) are checked on the tiny pipeline's run in tests/e2e, which
runs the stage anyway. No test asserts a speed: timings are measured by the stage, not judged by tests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ultraseg import params as params_mod, precision as precision_mod, timing
from ultraseg.pipeline import benchmark
from ultraseg.runtime.model_files import DEPLOY_FILE
from ultraseg.variants import by_name
from tests.conftest import load_script, shipped, shipped_params

QUICK = shipped("benchmark", threads=(1, 0), warmup=1, runs=3, batch=2, batch_runs=2, retries=0)
TINY_TRAINING = {"train": {"threads": 1, "batch_size": 2, "model": {"widths": [4, 8, 16]}},
                 "distill": {"student": {"widths": [4, 8]}}}
"""Training steps of tiny networks: the benchmark times the shipped ones, the tests only what it records."""


def test_disturbance_counts_other_processes_not_our_own(monkeypatch):
    # scripted clocks, so the arithmetic is checked rather than a shared machine's load: over 2 s of wall time on
    # 4 cores, the machine was busy 5 CPU-seconds, 3 of them ours, so others took 2 of the 8 available
    monkeypatch.setattr(timing, "busy_cpu_seconds", iter([100.0, 105.0]).__next__)
    monkeypatch.setattr(timing, "own_cpu_seconds", iter([10.0, 13.0]).__next__)
    monkeypatch.setattr(timing.time, "perf_counter", iter([50.0, 52.0]).__next__)
    monkeypatch.setattr(timing.os, "cpu_count", lambda: 4)
    assert timing.disturbed(lambda: {"p50_ms": 1.0}) == ({"p50_ms": 1.0}, 0.25)


def test_disturbance_reads_this_machine_and_passes_the_result_through():
    result, share = timing.disturbed(lambda: {"ran": sum(i * i for i in range(1000))})
    assert result == {"ran": sum(i * i for i in range(1000))}
    assert isinstance(share, float) and (np.isnan(share) or share >= 0.0)  # NaN where /proc/stat is missing


def test_a_disturbed_measurement_is_repeated_and_the_least_disturbed_kept(monkeypatch):
    shares = iter([0.5, 0.3, 0.05, 0.01])
    calls = []
    monkeypatch.setattr(timing, "disturbed", lambda fn: (calls.append(1) or {"p50_ms": len(calls)},
                                                            next(shares)))
    result = timing.steady(lambda: {}, max_disturbance=0.1, retries=5)
    assert result == {"p50_ms": 3, "disturbance": 0.05, "attempts": 3}
    shares = iter([0.5, 0.3, 0.4])
    calls.clear()
    result = timing.steady(lambda: {}, max_disturbance=0.1, retries=2)
    assert result == {"p50_ms": 2, "disturbance": 0.3, "attempts": 3}


def test_measure_reports_latency_throughput_and_memory(zoo):
    out = benchmark.measure("pruned_int8", zoo.models, zoo.size, QUICK)
    assert set(out) == {"rss_before_load_mb", "peak_rss_mb", "model_rss_mb", "threads_1", "threads_all"}
    one = out["threads_1"]
    assert one["threads"] == 1 and 0 < one["p50_ms"] <= one["p95_ms"]
    assert one["batch2_images_per_s"] > 0 and one["attempts"] == 1
    assert out["peak_rss_mb"] > 0 and out["rss_before_load_mb"] > 0
    assert out["peak_rss_mb"] >= out["rss_before_load_mb"] - 1  # the kernel updates the peak lazily


def test_run_measures_every_variant_in_its_own_process(zoo):
    params = dataclasses.replace(shipped_params({"preprocess": {"size": zoo.size}, **TINY_TRAINING}), benchmark=QUICK)
    variants = (by_name("teacher"), by_name("pruned_int8"))
    out = benchmark.run(params, zoo.models, variants)
    assert list(out["variants"]) == ["teacher", "pruned_int8"]
    teacher = out["variants"]["teacher"]
    assert teacher["gmacs"] > out["variants"]["pruned_int8"]["gmacs"] > 0
    assert teacher["file_mb"] == pytest.approx((zoo.models / "teacher.pt").stat().st_size / 1e6, abs=1e-3)
    speed = out["speedups"]["vs_teacher_threads_1"]
    assert speed["teacher"] == 1.0
    assert speed["pruned_int8"] == pytest.approx(
        teacher["threads_1"]["p50_ms"] / out["variants"]["pruned_int8"]["threads_1"]["p50_ms"], rel=0.01)
    assert out["environment"]["cores"] >= 1 and out["input"] == [1, 1, zoo.size, zoo.size]


RUNTIME_BOUND_MB = 300
"""Far above what numpy, OpenCV, ONNX Runtime and a tiny model take, far below what importing PyTorch adds: a
structural bound, not a timing."""


def test_end_to_end_memory_is_that_of_a_process_holding_only_the_runtime(zoo):
    import torch  # this process holds PyTorch and its peak is PyTorch's; the measured one must not be

    assert torch.ones(1).item() == 1
    frame = np.full((48, 64), 100, np.uint8)
    out = benchmark.measure_end_to_end(zoo.models / DEPLOY_FILE, {"scan": frame}, QUICK)
    assert out["torch_loaded"] is False
    assert 0 < out["peak_rss_mb"] < RUNTIME_BOUND_MB < timing.peak_rss_mb()
    scan = out["frames"]["scan"]
    assert scan["frame_hw"] == [48, 64] and 0 < scan["p50_ms"] <= scan["p95_ms"]


def test_both_profiles_are_timed_end_to_end_on_the_scan_and_a_scanner_frame(zoo, monkeypatch):
    from ultraseg.runtime.model_files import profile_file

    timed = []

    def measured(path, frames, cfg):
        timed.append((path, {name: f.shape for name, f in frames.items()}))
        return {"frames": {name: {"p50_ms": 1.0} for name in frames}, "peak_rss_mb": 1.0}

    monkeypatch.setattr(benchmark, "measure_end_to_end", measured)
    monkeypatch.setattr(benchmark, "in_fresh_process", lambda fn, *args: {"p50_ms": 10.0})  # the seed U-Net
    out = benchmark.end_to_end(zoo.models, np.full((48, 64), 100, np.uint8), 32, QUICK, {})
    shapes = {"scan": (48, 64), "scanner_640x480": (480, 640)}
    assert timed == [(profile_file("edge", zoo.models), shapes), (profile_file("accurate", zoo.models), shapes)]
    assert out["end_to_end"]["frames"].keys() == out["end_to_end_accurate"]["frames"].keys() == shapes.keys()


def test_a_failing_end_to_end_measurement_names_the_file(tmp_path):
    with pytest.raises(RuntimeError, match=r"nope\.onnx: the end-to-end measurement failed"):
        benchmark.measure_end_to_end(tmp_path / "nope.onnx", {"scan": np.zeros((8, 8), np.uint8)}, QUICK)


@pytest.mark.parametrize("native", [False, True])
def test_training_steps_are_timed_in_fp32_and_in_bf16_only_where_native(native, monkeypatch):
    """Without avx512_bf16/amx_bf16 bf16 is not timed (its emulation says nothing about the hardware); with them
    (here pretended when absent: emulated bf16 still runs, only its time means nothing) both are, with their ratio."""
    monkeypatch.setattr(precision_mod, "cpu_features", lambda: ("avx2", "amx_bf16") if native else ("avx2",))
    params = shipped_params({"preprocess": {"size": 32}, **TINY_TRAINING, "benchmark": {"warmup": 1, "runs": 30}})
    steps = benchmark.measure_training_steps(params)
    assert steps["cpu_features"] == (["avx2", "amx_bf16"] if native else ["avx2"])
    assert steps["bf16_supported"] is native
    for name in ("teacher", "student"):
        row = steps[name]
        assert row["fp32_ms"] > 0
        if native:
            assert row["bf16_ms"] > 0  # the ratio of the unrounded times; the recorded ones are rounded to 0.1 ms
            assert row["speedup"] == pytest.approx(row["fp32_ms"] / row["bf16_ms"], rel=0.03)
        else:
            assert row["bf16_ms"] is None and row["speedup"] is None


def test_stage_without_evaluate_metrics_fails_with_one_line(tmp_path, params_file, monkeypatch):
    params_file(tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        load_script("stages/benchmark.py").main(["--evaluate", "nope.json"])
    assert exit.value.code == "error: nope.json: missing; run the evaluate stage first (dvc repro evaluate)"


@pytest.mark.parametrize("field, value, message", [
    ("threads", [], "benchmark.threads"), ("size", 100, "benchmark.size"), ("runs", 0, "benchmark.runs"),
    ("max_disturbance", 2.0, "benchmark.max_disturbance"),
])
def test_bad_params_name_the_key(field, value, message):
    with pytest.raises(params_mod.ParamsError, match=rf"^{message}"):
        shipped_params({"benchmark": {field: value}})
