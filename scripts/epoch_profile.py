"""Profile one training epoch of the teacher and of the student in fp32 and, where the CPU multiplies bf16 natively,
in bf16, in one run, and write where each epoch's time goes to experiments/epoch_profile.json (REPORT reads it).

Each epoch is built from training's own pieces on the CPU with train.threads: the preprocessed train split in a
SegmentationSet with Augment (train.augment; the student's ranges from distill.augment), the DataLoader of
ultraseg.training.fit (same seeded order, train.workers), ultraseg.training.train_step for every batch and
ultraseg.training.validate on the whole val split (fp32, as in training). Its wall time is split into

  data        waiting for the next batch: augmentation and collation (or the workers' lag, with train.workers > 0)
  step        train_step: forward under the precision, loss, backward, clipping, optimiser step
  validation  validate: the val split's forward in fp32, loss, Dice/IoU, presence AUC
  other       what is left: the loop itself, memory-format conversion, the weight average (train.ema)

The precisions alternate within each model (fp32, bf16, fp32, ... with --rounds > 1), so their ratio is taken under
the same machine load; each model starts from the same seeded weights, and --warmup steps on the first batch run
untimed before each epoch (oneDNN builds its kernels then), so the epoch is a steady one like training's second.
The student is timed on its task loss (distill.task_loss), without a teacher: distillation adds the KD term and,
with cached teacher logits, the warping of one more map per sample.

    python scripts/epoch_profile.py                      # whole epochs (a few minutes on 2 cores)
    python scripts/epoch_profile.py --batches 10         # a quick look: 10 batches, then validation
    python scripts/epoch_profile.py --models student --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ultraseg import params as params_mod, precision as precision_mod, training
from ultraseg.data.augment import Augment
from ultraseg.data.dataset import SegmentationSet, load_split
from ultraseg.errors import DataError
from ultraseg.io import write_json
from ultraseg.losses import build_loss
from ultraseg.models.registry import build_model
from ultraseg.params import ParamsError, TrainParams

REPO = Path(__file__).resolve().parents[1]
MODELS = ("teacher", "student")
PARTS = ("data", "step", "validation", "other")


def budgets(params: params_mod.Params) -> dict[str, tuple[TrainParams, dict]]:
    """Each model's training settings and loss config, as the train and distill stages use them."""
    return {"teacher": (params.train, params_mod.to_dict(params.train.loss)),
            "student": (params.distill.budget(params.train), params.distill.task_loss(params.train))}


def precisions() -> list[precision_mod.Precision]:
    """fp32 and, where the CPU multiplies bf16 natively, bf16, on the CPU (as the benchmark's training steps)."""
    features = precision_mod.cpu_features()
    names = ["fp32", "bf16"] if precision_mod.cpu_has_bf16(features) else ["fp32"]
    return [precision_mod.Precision(name, "cpu", features) for name in names]


def profile_epoch(cfg: TrainParams, loss: dict, precision: precision_mod.Precision, data: dict,
                  batches: int | None, warmup: int) -> dict[str, Any]:
    """Seconds of one epoch (its first ``batches`` batches, then validation) of ``cfg.model`` under ``precision``,
    split into :data:`PARTS`."""
    cpu = torch.device("cpu")
    training.seed_everything(cfg.seed)
    model = build_model(cfg.model.config())
    fmt = training.memory_format(cpu)
    model.to(cpu, memory_format=fmt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = precision.grad_scaler()
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    criterion = build_loss(loss)

    def loss_fn(outputs, _images, masks):
        return criterion(outputs, masks)

    train_set = SegmentationSet(data["train_x"], data["train_y"], Augment(cfg.augment), cfg.seed)
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed * 10_000)).tolist()
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=order, drop_last=True,
                        num_workers=cfg.workers, worker_init_fn=training._worker_init)
    count = len(loader) if batches is None else batches

    def step(images: torch.Tensor, masks: torch.Tensor) -> float:
        images = images.contiguous(memory_format=fmt)
        return training.train_step(model, model, optimizer, scaler, precision, loss_fn, cfg.grad_clip, images,
                                   masks).item()

    model.train()
    if warmup:
        first = next(iter(loader))
        for _ in range(warmup):
            step(*first[:2])
    seconds = dict.fromkeys(PARTS, 0.0)
    started = time.perf_counter()
    batches_iter = iter(loader)
    for _ in range(count):
        t0 = time.perf_counter()
        images, masks, *_ = next(batches_iter)
        t1 = time.perf_counter()
        loss_value = step(images, masks)
        seconds["data"] += t1 - t0
        seconds["step"] += time.perf_counter() - t1
        if ema is not None:
            ema.update_parameters(model)
    t4 = time.perf_counter()
    val = training.validate(model if ema is None else ema.module, data["val_x"], data["val_y"], loss_fn, cpu,
                            cfg.threshold)
    seconds["validation"] = time.perf_counter() - t4
    epoch = time.perf_counter() - started
    seconds["other"] = max(0.0, epoch - seconds["data"] - seconds["step"] - seconds["validation"])
    return {"epoch_s": epoch, **{f"{p}_s": s for p, s in seconds.items()}, "last_train_loss": loss_value,
            "val_loss": val["loss"]}


def summarise(runs: list[dict], batches: int, per_epoch: int) -> dict[str, Any]:
    """The median over rounds of each part, their shares of the epoch, and the whole epoch's time projected from
    ``batches`` of its ``per_epoch`` batches."""
    med = {key: statistics.median(r[key] for r in runs) for key in ("epoch_s", *(f"{p}_s" for p in PARTS))}
    train_s = med["epoch_s"] - med["validation_s"]
    return {"epoch_s": round(med["epoch_s"], 4), **{k: round(v, 4) for k, v in med.items() if k != "epoch_s"},
            "shares": {p: round(med[f"{p}_s"] / med["epoch_s"], 4) for p in PARTS},
            "full_epoch_s": round(train_s * per_epoch / batches + med["validation_s"], 3),
            "rounds": [{k: round(v, 4) for k, v in r.items()} for r in runs]}


def run(params: params_mod.Params, data_dir: Path, split_csv: Path, models: list[str], batches: int | None,
        rounds: int, warmup: int) -> dict[str, Any]:
    threads = training.configure_cpu(params.train.threads)
    mode = params.preprocess.normalize
    train_x, train_y, _ = load_split(data_dir, split_csv, "train", mode)
    val_x, val_y, _ = load_split(data_dir, split_csv, "val", mode)
    data = {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}
    chosen = precisions()
    features = chosen[0].cpu_features
    out: dict[str, Any] = {"cpu_features": list(features), "bf16_supported": precision_mod.cpu_has_bf16(features),
                           "threads": threads, "device": "cpu", "train_images": len(train_x),
                           "val_images": len(val_x), "size": params.preprocess.size, "rounds": rounds,
                           "warmup_steps": warmup, "models": {}}
    plan = [(name, p) for name in models for _ in range(rounds) for p in chosen]  # precisions alternate
    runs: dict[str, dict[str, list[dict]]] = {name: {p.name: [] for p in chosen} for name in models}
    bar = tqdm(plan, desc="epoch_profile", unit="epoch")
    for name, precision in bar:
        cfg, loss = budgets(params)[name]
        per_epoch = len(train_x) // cfg.batch_size
        if per_epoch == 0:
            raise ParamsError(f"train.batch_size: {cfg.batch_size} is larger than the training set ({len(train_x)})")
        if batches is not None and batches > per_epoch:
            raise ParamsError(f"--batches {batches}: an epoch of {name} has only {per_epoch} batches")
        bar.set_postfix_str(f"{name} {precision.name}")
        timed = profile_epoch(cfg, loss, precision, data, batches, warmup)
        runs[name][precision.name].append(timed)
        tqdm.write(f"epoch_profile: {name} {precision.name}  epoch {timed['epoch_s']:.2f} s  "
                   + "  ".join(f"{p} {timed[f'{p}_s']:.2f}" for p in PARTS))
        out["models"].setdefault(name, {"model": cfg.model.config()["name"], "batch_size": cfg.batch_size,
                                        "batches": batches or per_epoch, "batches_per_epoch": per_epoch})
    for name in models:
        entry = out["models"][name]
        for p in chosen:
            entry[p.name] = summarise(runs[name][p.name], entry["batches"], entry["batches_per_epoch"])
        bf16 = entry.get("bf16")
        entry["fp32_over_bf16"] = None if bf16 is None else {
            "epoch": round(entry["fp32"]["epoch_s"] / bf16["epoch_s"], 3),
            "step": round(entry["fp32"]["step_s"] / bf16["step_s"], 3),
            "full_epoch": round(entry["fp32"]["full_epoch_s"] / bf16["full_epoch_s"], 3)}
    return out


def main(argv: list[str] | None = None) -> None:
    summary, _, details = __doc__.strip().partition("\n")
    ap = argparse.ArgumentParser(description=summary, epilog=details,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "preprocessed",
                    help="the preprocess stage's folder (default: data/preprocessed)")
    ap.add_argument("--split", type=Path, default=REPO / "data" / "split.csv", help="default: data/split.csv")
    ap.add_argument("--batches", type=int, default=None,
                    help="time only the first N batches of each epoch, then validation (default: the whole epoch)")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: both")
    ap.add_argument("--rounds", type=int, default=1,
                    help="epochs per model and precision, alternating; parts are their medians (default: 1)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before each epoch (default: 1)")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "epoch_profile.json",
                    help="default: experiments/epoch_profile.json")
    args = ap.parse_args(argv)
    if args.batches is not None and args.batches < 1:
        ap.error("--batches must be at least 1")
    if args.rounds < 1 or args.warmup < 0:
        ap.error("--rounds must be at least 1 and --warmup at least 0")
    if not (args.data / "index.csv").is_file():
        sys.exit(f"error: {args.data}: no preprocessed data (index.csv); run `dvc repro preprocess` or pass --data")
    if not args.split.is_file():
        sys.exit(f"error: {args.split}: no split file; run `dvc repro split` or pass --split")
    try:
        params = params_mod.load(args.params)
        result = run(params, args.data, args.split, args.models, args.batches, args.rounds, args.warmup)
    except (ParamsError, DataError, OSError) as err:
        sys.exit(f"error: {err}")
    write_json(args.out, result)
    ratios = "  ".join(f"{name} fp32/bf16 {m['fp32_over_bf16']['epoch']:.2f}" for name, m in result["models"].items()
                       if m["fp32_over_bf16"])
    print(f"epoch_profile: -> {args.out}  {ratios or 'no native bf16 on this CPU: fp32 only'}")


if __name__ == "__main__":
    main()
