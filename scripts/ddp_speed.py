"""Measure what DDP gains on this machine: the teacher (params.yaml's train section) trained for a few epochs on a
subset of the BUSI mirror by one process and by two (gloo, CPU), seconds per epoch of each, written to
results/ddp_speed.json.

    python scripts/ddp_speed.py                       # 128 train + 16 val lesion images, 3 epochs
    python scripts/ddp_speed.py --images 256 --epochs 4

Each configuration runs in a fresh process (two: the script starts itself under torchrun, as a stage does). Seconds
per epoch are the mean over the epochs after the first (start-up, allocator and oneDNN warm-up); the total wall time
of each run, process start included, is recorded too. The global batch is train.batch_size in both, so both make
the same optimiser steps; the cores are shared out (threads 0: every core for one process, half each for two).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO.parent / "shared" / "data" / "busi"


def mirror_arrays(root: Path, count: int, params) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` lesion images of the mirror (benign and malignant alternately), preprocessed as the
    pipeline does and normalised, with their masks."""
    import cv2

    from ultraseg.runtime.preprocess import normalize, preprocess, resize_mask

    files = [sorted((root / cls).glob("*.webp"), key=lambda p: int(p.stem.split("(")[1].rstrip(")")))
             for cls in ("benign", "malignant")]
    chosen = [f for pair in zip(*files) for f in pair][:count]
    images = [preprocess(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), params.preprocess) for f in chosen]
    masks = [resize_mask(cv2.imread(str(f.with_name(f"{f.stem}_mask.png")), cv2.IMREAD_GRAYSCALE) > 0,
                         params.preprocess.size) for f in chosen]
    return normalize(np.stack(images), params.preprocess.normalize), np.stack(masks).astype(np.uint8)


def train_once(args: argparse.Namespace) -> dict | None:
    """One timed training run with ``args.nproc`` processes; its history on rank 0."""
    import torch

    from ultraseg import distributed, params as params_mod, training
    from ultraseg.data.augment import Augment
    from ultraseg.data.dataset import SegmentationSet
    from ultraseg.losses import build_loss
    from ultraseg.models.registry import build_model

    params = params_mod.load(REPO / "params.yaml")
    cfg = dataclasses.replace(params.train, epochs=args.epochs, device="cpu", patience=0,
                              distributed=dataclasses.replace(params.train.distributed, nproc=args.nproc))

    def work() -> dict:
        threads = training.configure_cpu(cfg.threads)
        x, y = mirror_arrays(MIRROR, args.images + args.val, params)
        training.seed_everything(cfg.seed)
        model = build_model(cfg.model.config())
        criterion = build_loss(params_mod.to_dict(cfg.loss))
        train_set = SegmentationSet(x[args.val:], y[args.val:], Augment(cfg.augment), cfg.seed)
        result = training.fit(model, train_set, x[:args.val], y[:args.val], cfg,
                              lambda logits, _x, masks: criterion(logits, masks), torch.device("cpu"), None,
                              Path(args.scratch) / "resume.pt", "ddp-speed", desc=f"nproc {args.nproc}")
        seconds = [row["seconds"] for row in result.history]
        return {"threads_per_process": threads, "epoch_seconds": np.diff([0.0, *seconds]).round(2).tolist()}

    return distributed.run_stage(__file__, sys.argv[1:], cfg, work)


def busy_cpu_seconds() -> float:
    """CPU time all processes on this machine have used since boot (user + nice + system, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(v) for v in fields[:3]) / os.sysconf("SC_CLK_TCK")


def measure(nproc: int, args: argparse.Namespace, scratch: Path) -> dict:
    """Run this script for ``nproc`` processes in a fresh process; its timings, and the share of the machine's CPU
    time that other processes took meanwhile (a timing is only as good as the machine was quiet)."""
    out = scratch / f"nproc{nproc}.json"
    command = [sys.executable, __file__, "--run", str(out), "--nproc", str(nproc), "--images", str(args.images),
               "--val", str(args.val), "--epochs", str(args.epochs), "--scratch", str(scratch / str(nproc))]
    own, busy, start = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_seconds(), time.perf_counter()
    subprocess.run(command, check=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime  # the run's processes, workers included
    others = max(0.0, busy_cpu_seconds() - busy - ours) / (wall * len(os.sched_getaffinity(0)))
    run = json.loads(out.read_text()) | {"wall_seconds": round(wall, 1), "cpu_seconds": round(ours, 1),
                                         "other_processes_cpu_share": round(others, 3)}
    run["seconds_per_epoch"] = round(float(np.mean(run["epoch_seconds"][1:])), 2)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=128, help="training images (default: %(default)s)")
    ap.add_argument("--val", type=int, default=16, help="val images (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=3, help="at least 2 (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "ddp_speed.json")
    ap.add_argument("--nproc", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)  # one timed run, its result to this file
    ap.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)  # the run's resume file goes here
    args = ap.parse_args()
    if args.run is not None:
        if (result := train_once(args)) is not None:
            args.run.write_text(json.dumps(result))
        return

    import torch

    from ultraseg import params as params_mod

    with tempfile.TemporaryDirectory() as scratch:  # fresh resume folders: a run never resumes an earlier one
        runs = {n: measure(n, args, Path(scratch)) for n in (1, 2)}
    train = params_mod.load(REPO / "params.yaml").train
    report = {
        "script": "scripts/ddp_speed.py", "command": " ".join(["python", "scripts/ddp_speed.py", *sys.argv[1:]]),
        "model": f"teacher: {train.model.name} widths {list(train.model.widths)}, params.yaml's train section",
        "train_images": args.images, "val_images": args.val, "epochs": args.epochs,
        "global_batch": train.batch_size, "backend": "gloo", "sync_bn": train.distributed.sync_bn,
        "seconds_per_epoch": {str(n): r["seconds_per_epoch"] for n, r in runs.items()},
        "speedup_2_vs_1": round(runs[1]["seconds_per_epoch"] / runs[2]["seconds_per_epoch"], 3),
        "runs": {str(n): r for n, r in runs.items()},
        "cores": len(os.sched_getaffinity(0)), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"seconds per epoch: 1 process {report['seconds_per_epoch']['1']}, 2 processes "
          f"{report['seconds_per_epoch']['2']}; speed-up x{report['speedup_2_vs_1']} on {report['cores']} cores "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
