"""The benchmark's end-to-end probe: the deployable file through the torch-free runtime, frame in and answer out, in
a process that holds nothing else, so that its peak resident memory is what a deployment needs.

Run as ``python -m ultraseg.pipeline.end_to_end DEPLOYABLE FRAMES.npz SETTINGS_JSON OUT.json`` by
:func:`ultraseg.pipeline.benchmark.end_to_end`. It imports the runtime and the timing helpers only, never the
benchmark module (which would bring PyTorch, the training code and matplotlib along).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ultraseg.runtime.segmenter import Segmenter
from ultraseg.timing import peak_rss_mb, steady, time_call


def measure(deployable: Path, frames: dict[str, np.ndarray], warmup: int, runs: int, max_disturbance: float,
            retries: int) -> dict[str, Any]:
    """Every frame end to end on one thread: the p50/p95 latency, the median of each part (preprocess, model,
    post-process), and this process's peak memory and whether PyTorch was loaded."""
    cv2.setNumThreads(1)  # OpenCV's own pool would lend the preprocessing other cores: one core means one thread
    segmenter = Segmenter(deployable, threads=1)
    out: dict[str, Any] = {}
    for name, frame in frames.items():
        parts: list[dict[str, float]] = []
        timed = steady(lambda: time_call(lambda: parts.append(segmenter.segment(frame).timings), warmup, runs),
                       max_disturbance, retries)
        last = parts[-runs:]
        out[name] = {"frame_hw": list(frame.shape[:2]), "p50_ms": round(timed["p50_ms"], 3),
                     "p95_ms": round(timed["p95_ms"], 3), "disturbance": timed["disturbance"],
                     **{f"{key[:-3]}_p50_ms": round(float(np.median([p[key] for p in last])), 3) for key in last[0]}}
    return {"frames": out, "torch_loaded": "torch" in sys.modules, "peak_rss_mb": round(peak_rss_mb(), 1)}


def main(argv: list[str]) -> None:
    deployable, frames_file, settings, out = argv
    with np.load(frames_file) as saved:
        frames = {name: saved[name] for name in saved.files}
    result = measure(Path(deployable), frames, **json.loads(settings))
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
