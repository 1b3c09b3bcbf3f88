"""The benchmark stage's work: size, compute, latency, throughput and memory of every variant on this CPU.

Each variant is measured in a fresh process (so its peak resident memory is its own) with every thread count of
``benchmark.threads``: batch-1 latency p50/p95 after warm-up (:func:`ultraseg.timing.time_call`) and batch-``batch``
throughput, on a fixed seeded input built outside the timed loop. The machine is shared, so every timed block
records the CPU time other processes used while it ran (from ``/proc/stat``, less this process's own time) as a
fraction of all cores' time, and a block disturbed beyond ``max_disturbance`` is repeated; the least disturbed
attempt is kept, and its disturbance reported.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import platform
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ultraseg import figures
from ultraseg.data.busi import load_raw
from ultraseg.io import split_ids
from ultraseg.timing import time_call
from ultraseg.params import BenchmarkParams, Params
from ultraseg.runtime.model_files import DEPLOY_FILE, INT8_VARIANT, checkpoint_file
from ultraseg.variants import VARIANTS, Variant, by_name, predictor

SEED_UNET = {"name": "unet", "widths": [64, 128, 256, 512]}
"""The U-Net this project started from: four levels of 64-512 channels."""
SEED_INPUT = 256
"""The seed U-Net's input side."""


# ---------------------------------------------------------------------------------------------------- disturbance


def busy_cpu_seconds() -> float | None:
    """CPU seconds all cores have spent not idle since boot (``/proc/stat``); None where there is no such file."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def disturbed(fn: Callable[[], dict]) -> tuple[dict, float]:
    """Run ``fn``; return its result and the share of all cores' time other processes used meanwhile (NaN where
    ``/proc/stat`` cannot be read)."""
    busy, own, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    result = fn()
    wall, busy_after = time.perf_counter() - start, busy_cpu_seconds()
    if busy is None or busy_after is None:
        return result, float("nan")
    others = max(0.0, (busy_after - busy) - (own_cpu_seconds() - own))
    return result, others / (wall * os.cpu_count())


def steady(fn: Callable[[], dict], max_disturbance: float, retries: int) -> dict:
    """``fn()``'s result from the least disturbed of up to ``1 + retries`` attempts, stopping at the first one
    within ``max_disturbance``; adds ``disturbance`` and ``attempts``."""
    best, best_share, attempts = None, float("inf"), 0
    for attempts in range(1, retries + 2):
        result, share = disturbed(fn)
        if best is None or share < best_share or np.isnan(share):
            best, best_share = result, share
        if not share > max_disturbance:  # NaN (unknown) is not retried
            break
    return {**best, "disturbance": round(best_share, 4), "attempts": attempts}


# ---------------------------------------------------------------------------------------------------- measuring


def rss_mb() -> float:
    """Current resident memory of this process (MB), from ``/proc/self/statm``; NaN elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux reports KiB


def measure(name: str, models_dir: Path, size: int, params: BenchmarkParams) -> dict[str, Any]:
    """All timings of one variant in this process; meant to run in a fresh one (see :func:`run`)."""
    variant = by_name(name)
    cores = len(os.sched_getaffinity(0))
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 1, size, size), dtype=np.float32)
    many = rng.standard_normal((params.batch, 1, size, size), dtype=np.float32)
    before = rss_mb()
    out: dict[str, Any] = {}
    for threads in params.threads:
        predict = predictor(variant, models_dir, threads or cores)
        latency = steady(lambda: time_call(lambda: predict(one), params.warmup, params.runs),
                         params.max_disturbance, params.retries)
        batch = steady(lambda: time_call(lambda: predict(many), max(1, params.warmup // 5), params.batch_runs),
                       params.max_disturbance, params.retries)
        out[f"threads_{threads or 'all'}"] = {
            "threads": threads or cores,
            "p50_ms": round(latency["p50_ms"], 3), "p95_ms": round(latency["p95_ms"], 3),
            "disturbance": latency["disturbance"], "attempts": latency["attempts"],
            f"batch{params.batch}_images_per_s": round(params.batch * 1000 / batch["p50_ms"], 1),
            f"batch{params.batch}_disturbance": batch["disturbance"],
        }
        del predict  # one model in memory at a time, so the peak RSS is one model's
        gc.collect()
    return {"rss_before_load_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "model_rss_mb": round(peak_rss_mb() - before, 1), **out}


def measure_end_to_end(deployable: Path, frames: dict[str, np.ndarray], params: BenchmarkParams) -> dict[str, Any]:
    """The deployable file through the torch-free runtime, frame in and answer out (preprocess, model,
    post-process), one thread, on each frame; with the median of each part and this process's peak memory. Meant to
    run in a fresh process, which then holds the runtime alone."""
    import cv2

    from ultraseg.runtime.segmenter import Segmenter

    cv2.setNumThreads(1)  # OpenCV's own pool would lend the preprocessing other cores: one core means one thread
    segmenter = Segmenter(deployable, threads=1)
    out: dict[str, Any] = {}
    for name, frame in frames.items():
        parts: list[dict[str, float]] = []
        timed = steady(lambda: time_call(lambda: parts.append(segmenter.segment(frame).timings), params.warmup,
                                         params.runs), params.max_disturbance, params.retries)
        last = parts[-params.runs:]
        out[name] = {"frame_hw": list(frame.shape[:2]), "p50_ms": round(timed["p50_ms"], 3),
                     "p95_ms": round(timed["p95_ms"], 3), "disturbance": timed["disturbance"],
                     **{f"{key[:-3]}_p50_ms": round(float(np.median([p[key] for p in last])), 3) for key in last[0]}}
    import sys

    return {"frames": out, "torch_loaded": "torch" in sys.modules, "peak_rss_mb": round(peak_rss_mb(), 1)}


def measure_seed_unet(size: int, params: BenchmarkParams) -> dict[str, Any]:
    """The seed-size U-Net (untrained: its speed does not depend on its weights) in PyTorch eager fp32, one thread,
    at ``size`` px: the reference the deployable model's end-to-end time is compared with."""
    from ultraseg.models.registry import build_model, count_macs, count_parameters
    from ultraseg.timing import torch_runner

    model = build_model(SEED_UNET).eval()
    runs = max(3, params.runs // 10)  # each call takes long enough that a few give a stable median
    timed = steady(lambda: time_call(torch_runner(model, (1, 1, size, size)), min(params.warmup, 2), runs),
                   params.max_disturbance, params.retries)
    return {"model": SEED_UNET, "input": [1, 1, size, size], "params": count_parameters(model),
            "gmacs": round(count_macs(model, size) / 1e9, 3), "p50_ms": round(timed["p50_ms"], 3),
            "runs": runs, "disturbance": timed["disturbance"]}


def test_frame(raw_dir: Path, split_csv: Path) -> np.ndarray:
    """The first test image at its own resolution: a real scan for the end-to-end timing (no score is taken)."""
    return load_raw(raw_dir, split_ids(split_csv, "test")[0])[0]


def in_fresh_process(fn: Callable[..., dict], *args: Any) -> dict:
    """``fn(*args)`` in a new interpreter: no memory, threads or imported frameworks left by earlier work."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def static(variant: Variant, models_dir: Path, size: int) -> dict[str, Any]:
    """Parameters and MACs of the variant's network (from its PyTorch checkpoint) and its file size."""
    from ultraseg import checkpoint
    from ultraseg.models.registry import count_macs, count_parameters

    model, _ = checkpoint.load(Path(models_dir) / checkpoint_file(variant.network))
    return {"runtime": variant.runtime, "precision": variant.precision, "file": variant.file,
            "file_mb": round((Path(models_dir) / variant.file).stat().st_size / 1e6, 3),
            "params": count_parameters(model), "gmacs": round(count_macs(model, size) / 1e9, 4)}


def environment() -> dict[str, Any]:
    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor() or "unknown")
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "timer": "time.perf_counter"}


def _read_lines(path: str) -> list[str]:
    try:
        with open(path) as fh:
            return fh.readlines()
    except OSError:
        return []


def run(params: Params, models_dir: Path, variants: tuple[Variant, ...] = VARIANTS,
        frame: np.ndarray | None = None) -> dict[str, Any]:
    """Every variant, one fresh process each, in one session; speed-ups are ratios within it. With a ``frame`` (a
    real scan), also the deployable file end to end on it and on it enlarged to a scanner's 640 x 480, and the
    seed-size U-Net."""
    cfg = params.benchmark
    size = cfg.size or params.preprocess.size
    results = {}
    for variant in tqdm(variants, desc="benchmark", unit="variant"):
        timings = in_fresh_process(measure, variant.name, models_dir, size, cfg)
        results[variant.name] = {**static(variant, models_dir, size), **timings}
        tqdm.write(f"benchmark: {variant.name:13s} p50 "
                   + "  ".join(f"{k[8:]} thr {v['p50_ms']:.2f} ms" for k, v in timings.items()
                               if k.startswith("threads_")))
    summary = {"input": [1, 1, size, size], "environment": environment(),
               "settings": {"warmup": cfg.warmup, "runs": cfg.runs, "batch": cfg.batch, "batch_runs": cfg.batch_runs,
                            "max_disturbance": cfg.max_disturbance, "retries": cfg.retries},
               "variants": results, "speedups": speedups(results)}
    if frame is not None:
        summary |= end_to_end(models_dir, frame, size, cfg, results)
    return summary


def end_to_end(models_dir: Path, frame: np.ndarray, size: int, cfg: BenchmarkParams,
               results: dict[str, dict]) -> dict[str, Any]:
    """The deployable file's whole-frame latency and the runtime's memory, the seed U-Net, and their ratios."""
    frames = {"scan": frame, "scanner_640x480": cv2.resize(frame, (640, 480), interpolation=cv2.INTER_LINEAR)}
    deployed = in_fresh_process(measure_end_to_end, Path(models_dir) / DEPLOY_FILE, frames, cfg)
    seed = in_fresh_process(measure_seed_unet, SEED_INPUT, cfg)
    scan = deployed["frames"]["scan"]["p50_ms"]
    tqdm.write(f"benchmark: deployed end to end {scan:.2f} ms per frame; seed U-Net {seed['p50_ms']:.1f} ms")
    return {"end_to_end": deployed, "seed_unet": seed,
            "speedup_end_to_end_vs_seed_unet": round(seed["p50_ms"] / scan, 1),
            "speedup_end_to_end_vs_teacher_eager": round(results["teacher"]["threads_1"]["p50_ms"] / scan, 2)
            if "teacher" in results else None}


def speedups(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """p50 of the teacher (eager and ONNX Runtime) over every variant's p50, per thread setting."""
    out: dict[str, dict[str, float]] = {}
    for key in (k for k in results.get("teacher", {}) if k.startswith("threads_")):
        for base in ("teacher", "teacher_onnx"):
            if base in results:
                ref = results[base][key]["p50_ms"]
                out[f"vs_{base}_{key}"] = {name: round(ref / r[key]["p50_ms"], 2) for name, r in results.items()}
    return out


# ---------------------------------------------------------------------------------------------------- figures


def tradeoff_rows(bench: dict, evaluate: dict, key: str = "threads_1") -> list[dict]:
    """One row per variant: its batch-1 p50 at ``key`` and its test Dice, for the trade-off plot."""
    return [{"variant": name, "latency_ms": r[key]["p50_ms"], "test_dice": evaluate["variants"][name]["dice"],
             "file_mb": r["file_mb"]} for name, r in bench["variants"].items() if name in evaluate["variants"]]


def tradeoff_figure(rows: list[dict], path: Path, title: str) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    # A legend, not labels beside the points: a model and its ONNX twin sit almost on top of each other.
    for row in rows:
        marker = "*" if row["variant"] == INT8_VARIANT else "s" if row["variant"].endswith("_onnx") else "o"
        ax.scatter(row["latency_ms"], row["test_dice"], s=140 if marker == "*" else 45, marker=marker,
                   alpha=0.8, label=row["variant"])
    ax.legend(fontsize=7, loc="best", ncol=2)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel("batch-1 latency p50 (ms, log scale)")
    ax.set_ylabel("test Dice (lesion images)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    figures.save(fig, path)


def _plain_log_ticks(axis) -> None:
    """Plain numbers on a log axis, and no minor labels (matplotlib's 3x10^0 style ones overlap)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def bars_figure(bench: dict, path: Path) -> None:
    """File size and batch-1 p50 per variant and thread setting, side by side."""
    plt = figures.pyplot()
    names = list(bench["variants"])
    keys = [k for k in bench["variants"][names[0]] if k.startswith("threads_")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.bar(names, [bench["variants"][n]["file_mb"] for n in names], color="tab:gray")
    left.set_ylabel("file size (MB)")
    left.set_yscale("log")
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        xs = np.arange(len(names)) + (j - (len(keys) - 1) / 2) * width
        right.bar(xs, [bench["variants"][n][key]["p50_ms"] for n in names], width, label=key.replace("_", " "))
    right.set_xticks(range(len(names)), names)
    right.set_ylabel("batch-1 latency p50 (ms)")
    right.set_yscale("log")
    _plain_log_ticks(right.yaxis)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=25)
    fig.tight_layout()
    figures.save(fig, path)
