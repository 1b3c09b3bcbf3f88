"""The benchmark stage's work: size, compute, latency, throughput and memory of every variant on this CPU, and
the training step's time in fp32 and bf16.

Each variant is measured in a fresh process (so its peak resident memory is its own) with every thread count of
``benchmark.threads``: batch-1 latency p50/p95 after warm-up (:func:`ultraseg.timing.time_call`) and batch-``batch``
throughput, on a fixed seeded input built outside the timed loop. The machine is shared, so every timed block
records the CPU time other processes used while it ran (from ``/proc/stat``, less this process's own time) as a
fraction of all cores' time, and a block disturbed beyond ``max_disturbance`` is repeated; the least disturbed
attempt is kept, and its disturbance reported (:func:`ultraseg.timing.steady`). Each profile's deployable file end to
end runs in a process that imports the torch-free runtime alone (:mod:`ultraseg.pipeline.end_to_end`), so its peak
memory is a deployment's.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from tqdm import tqdm

from ultraseg import figures
from ultraseg.data.busi import load_raw
from ultraseg.io import split_ids
from ultraseg.params import BenchmarkParams, Params
from ultraseg.pipeline import end_to_end as end_to_end_probe
from ultraseg.runtime.model_files import INT8_VARIANT, checkpoint_file, profile_file
from ultraseg.timing import peak_rss_mb, steady, time_call
from ultraseg.variants import VARIANTS, Variant, by_name, predictor

if TYPE_CHECKING:
    from ultraseg.precision import Precision

SEED_UNET = {"name": "unet", "widths": [64, 128, 256, 512]}
"""The U-Net this project started from: four levels of 64-512 channels."""
SEED_INPUT = 256
"""The seed U-Net's input side."""


# ---------------------------------------------------------------------------------------------------- measuring


def rss_mb() -> float:
    """Current resident memory of this process (MB), from ``/proc/self/statm``; NaN elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        return float("nan")


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
    """The deployable file end to end on each frame, one thread, with this process's peak memory: measured by
    :mod:`ultraseg.pipeline.end_to_end` in a new interpreter that imports the torch-free runtime alone."""
    settings = {"warmup": params.warmup, "runs": params.runs, "max_disturbance": params.max_disturbance,
                "retries": params.retries}
    src = str(Path(end_to_end_probe.__file__).parents[2])  # this ultraseg's sources, whatever the caller's path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "frames.npz", **frames)
        out = Path(tmp) / "end_to_end.json"
        done = subprocess.run([sys.executable, "-m", end_to_end_probe.__name__, str(deployable),
                               str(Path(tmp) / "frames.npz"), json.dumps(settings), str(out)],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{deployable}: the end-to-end measurement failed:\n{done.stderr.strip()}")
        return json.loads(out.read_text())


def measure_training_steps(params: Params) -> dict[str, Any]:
    """A training step of the teacher and of the student (task loss) at ``train.batch_size`` and the training input
    side, on the CPU with ``train.threads``: its p50 in fp32 and, where the CPU multiplies bf16 natively, in bf16,
    and their ratio. A few steps after warm-up, as for the seed U-Net: each is long enough for a stable median."""
    from ultraseg import params as params_mod, precision as precision_mod, training

    training.configure_cpu(params.train.threads)
    features = precision_mod.cpu_features()
    supported = precision_mod.cpu_has_bf16(features)
    losses = {"teacher": params_mod.to_dict(params.train.loss), "student": params.distill.task_loss(params.train)}
    models = {"teacher": params.train.model, "student": params.distill.student}
    out: dict[str, Any] = {"cpu_features": list(features), "bf16_supported": supported}
    for name, model in models.items():
        fp32 = _step_ms(model.config(), losses[name], params, precision_mod.Precision("fp32", "cpu", features))
        bf16 = _step_ms(model.config(), losses[name], params, precision_mod.Precision("bf16", "cpu", features)) \
            if supported else None
        out[name] = {"fp32_ms": round(fp32, 1), "bf16_ms": None if bf16 is None else round(bf16, 1),
                     "speedup": None if bf16 is None else round(fp32 / bf16, 2)}
    return out


def _step_ms(config: dict, loss: dict, params: Params, precision: Precision) -> float:
    """p50 (ms) of :func:`ultraseg.training.train_step` on a fixed seeded batch of images and disc masks."""
    import torch

    from ultraseg import training
    from ultraseg.losses import build_loss
    from ultraseg.models.registry import build_model

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(config).to(memory_format=training.memory_format(cpu)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.train.lr, weight_decay=params.train.weight_decay)
    criterion = build_loss(loss)
    batch, side = params.train.batch_size, params.preprocess.size
    images = torch.randn(batch, 1, side, side).contiguous(memory_format=training.memory_format(cpu))
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    masks = (((yy - side / 2) ** 2 + (xx - side / 2) ** 2) < (side / 4) ** 2).float().expand(batch, 1, side, side)
    scaler = precision.grad_scaler()

    def step() -> None:
        training.train_step(model, model, optimizer, scaler, precision, lambda logits, _x, m: criterion(logits, m),
                            params.train.grad_clip, images, masks)

    runs = max(3, params.benchmark.runs // 10)
    return time_call(step, min(params.benchmark.warmup, 2), runs)["p50_ms"]


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
    steps = in_fresh_process(measure_training_steps, params)
    tqdm.write("benchmark: training step " + "  ".join(
        f"{name} fp32 {steps[name]['fp32_ms']:.0f} ms bf16 "
        + (f"{steps[name]['bf16_ms']:.0f} ms" if steps["bf16_supported"] else "not native here")
        for name in ("teacher", "student")))
    summary = {"input": [1, 1, size, size], "environment": environment(),
               "settings": {"warmup": cfg.warmup, "runs": cfg.runs, "batch": cfg.batch, "batch_runs": cfg.batch_runs,
                            "max_disturbance": cfg.max_disturbance, "retries": cfg.retries,
                            "memory_goal_mb": cfg.memory_goal_mb},
               "variants": results, "speedups": speedups(results), "training_steps": steps}
    if frame is not None:
        summary |= end_to_end(models_dir, frame, size, cfg, results)
    return summary


def end_to_end(models_dir: Path, frame: np.ndarray, size: int, cfg: BenchmarkParams,
               results: dict[str, dict]) -> dict[str, Any]:
    """The edge profile's whole-frame latency and the runtime's memory, the seed U-Net, and their ratios, and under
    ``end_to_end_accurate`` the accurate profile's."""
    frames = {"scan": frame, "scanner_640x480": cv2.resize(frame, (640, 480), interpolation=cv2.INTER_LINEAR)}
    deployed = measure_end_to_end(profile_file("edge", models_dir), frames, cfg)
    accurate = measure_end_to_end(profile_file("accurate", models_dir), frames, cfg)
    seed = in_fresh_process(measure_seed_unet, SEED_INPUT, cfg)
    scan = deployed["frames"]["scan"]["p50_ms"]
    tqdm.write(f"benchmark: deployed end to end {scan:.2f} ms per frame, peak memory {deployed['peak_rss_mb']} MB "
               f"(goal {cfg.memory_goal_mb:g}); accurate profile {accurate['frames']['scan']['p50_ms']:.2f} ms; "
               f"seed U-Net {seed['p50_ms']:.1f} ms")
    return {"end_to_end": deployed, "end_to_end_accurate": accurate, "seed_unet": seed,
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
