"""Latency measurement (after nanoGPT's ``bench.py``: warm up, time many repeats, report the median).

Only the model call is timed: the input is built once, outside the loop. On a shared machine absolute times drift,
so models are compared by ratios of medians measured in one interleaved session (:func:`compare`), and a timed block
records the CPU time other processes took while it ran (:func:`steady` repeats a disturbed one). Torch-free, so that
a process timing the runtime holds nothing else.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn


def time_call(fn: Callable[[], object], warmup: int = 10, runs: int = 50) -> dict[str, float]:
    """``p50_ms``, ``p95_ms``, ``mean_ms``, ``min_ms`` of ``runs`` calls after ``warmup`` untimed ones."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"expected runs >= 1 and warmup >= 0, got {runs} and {warmup}")
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for k in range(runs):
        start = time.perf_counter()
        fn()
        times[k] = time.perf_counter() - start
    times *= 1000
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
            "mean_ms": float(times.mean()), "min_ms": float(times.min()), "runs": runs}


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


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB) since it started: the kernel's high-water mark (``VmHWM`` in
    ``/proc/self/status``), NaN where there is none. Not ``ru_maxrss``: the kernel carries the high-water mark of the
    process that started this one across ``exec`` into it, so a small fresh process would report its parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return float("nan")
    return kib * 1024 / 1e6


def _input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def onnx_runner(path: str | Path, shape: tuple[int, ...], threads: int = 1, seed: int = 0) -> Callable[[], object]:
    """A zero-argument call of an ONNX Runtime session on a fixed seeded input."""
    from ultraseg.runtime.model_files import INPUT, session

    sess, feed = session(path, threads), {INPUT: _input(shape, seed)}
    return lambda: sess.run(None, feed)


def torch_runner(model: nn.Module, shape: tuple[int, ...], threads: int = 1, seed: int = 0) -> Callable[[], object]:
    """A zero-argument eager PyTorch forward (eval, no grad) on a fixed seeded input, with ``threads`` threads."""
    import torch  # imported here so that timing the torch-free runtime does not load PyTorch

    x = torch.from_numpy(_input(shape, seed))
    model = model.eval()

    def call() -> object:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return model(x)
        finally:
            torch.set_num_threads(previous)

    return call


def latency(path: str | Path, shape: tuple[int, ...] = (1, 1, 128, 128), threads: int = 1, warmup: int = 10,
            runs: int = 50, seed: int = 0) -> dict[str, float]:
    """Latency of one ONNX model; see :func:`time_call`."""
    return time_call(onnx_runner(path, shape, threads, seed), warmup, runs) | {"threads": threads}


def compare(runners: dict[str, Callable[[], object]], rounds: int = 3, warmup: int = 10,
            runs: int = 30) -> dict[str, float]:
    """Median over ``rounds`` of each runner's p50 (ms), the runners interleaved round by round so that a burst of
    load from other processes hits all of them alike."""
    p50s: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            p50s[name].append(time_call(fn, warmup, runs)["p50_ms"])
    return {name: round(float(np.median(v)), 3) for name, v in p50s.items()}
