"""The training loop (after nanoGPT's ``train.py``: one loop, read top to bottom) and its small helpers.

:func:`fit` trains any segmentation model with any loss of ``(logits, images, masks, *extra)`` (:data:`LossFn`), so
the teacher and the distilled student share it. Every epoch it validates, logs to dvclive, keeps the best weights
by val Dice and writes a resume file; an interrupted run started again with the same params continues from its last
finished epoch. :func:`fit_and_save` wraps it for a stage: the splits in, a rebuildable checkpoint and a summary
out. Run by several processes (:mod:`ultraseg.distributed`), each trains on its share of every batch and rank 0
alone validates, logs and writes files.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from dvclive import Live
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ultraseg import checkpoint, distributed, metadata, metrics, precision as precision_mod
from ultraseg.data.augment import Augment
from ultraseg.data.dataset import SegmentationSet, load_split
from ultraseg.io import atomic_path
from ultraseg.models.registry import count_macs, count_parameters
from ultraseg.models.unet import Outputs, split_outputs
from ultraseg.params import Params, ParamsError, TrainParams

LossFn = Callable[..., torch.Tensor]
"""``loss(outputs, images, masks, *extra)``: ``outputs`` are the network's (logits, or logits and presence logits,
see :func:`ultraseg.models.split_outputs`); images are passed so a distillation loss can query its teacher; extra
holds what else the training set yields per sample (a teacher's cached logits and presence logits), and nothing at
validation."""


# ---------------------------------------------------------------------------------------------------- set-up


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def configure_cpu(threads: int) -> int:
    """Use ``threads`` (0: every core, shared out among this machine's training processes) for PyTorch; keep OpenCV
    single-threaded so it does not fight PyTorch."""
    threads = threads or max(1, len(os.sched_getaffinity(0)) // distributed.local_world_size())
    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def memory_format(device: torch.device) -> torch.memory_format:
    """oneDNN's NHWC convolutions are the fast path on x86 CPUs, in fp32 and bf16 alike."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the base learning rate."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# ---------------------------------------------------------------------------------------------------- evaluation


def as_float(outputs: Outputs) -> Outputs:
    """The network's outputs in fp32 (a forward under autocast gives bf16 or fp16)."""
    return tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()


@torch.no_grad()
def predict_outputs(model: nn.Module, images: np.ndarray, device: torch.device,
                    batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (N, 1, S, S) and presence logits (N, 1), or None without a presence head, on the CPU, for normalised
    images (N, S, S)."""
    model.eval()
    parts = [split_outputs(model(torch.from_numpy(images[s:s + batch_size, None]).to(device)))
             for s in range(0, len(images), batch_size)]
    logits = torch.cat([p[0].float().cpu() for p in parts])
    presence = None if parts[0][1] is None else torch.cat([p[1].float().cpu() for p in parts])
    return logits, presence


def predict_logits(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 32) -> torch.Tensor:
    """Logits (N, 1, S, S), on the CPU, for normalised images (N, S, S)."""
    return predict_outputs(model, images, device, batch_size)[0]


@torch.no_grad()
def validate(model: nn.Module, images: np.ndarray, masks: np.ndarray, loss_fn: LossFn, device: torch.device,
             threshold: float) -> dict[str, float]:
    """Val loss, the lesion-image mean Dice/IoU at ``threshold`` (see :mod:`ultraseg.metrics`) and, for a network
    with a presence head, the presence logits' ROC AUC for lesion versus normal images."""
    logits, presence = predict_outputs(model, images, device)
    outputs = logits if presence is None else (logits, presence)
    target = torch.from_numpy(masks[:, None].astype(np.float32))
    moved = tuple(o.to(device) for o in outputs) if presence is not None else logits.to(device)
    loss = float(loss_fn(moved, torch.from_numpy(images[:, None]).to(device), target.to(device)))
    probs = torch.sigmoid(logits).numpy()[:, 0]
    scores = probs.reshape(len(probs), -1).max(1) if presence is None else presence.numpy()[:, 0]
    return {"loss": loss, **metrics.summarize(probs > threshold, masks > 0),
            "presence_auc": metrics.roc_auc(scores, masks.reshape(len(masks), -1).any(1))}


# ---------------------------------------------------------------------------------------------------- training


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best: dict[str, float]
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train_step(net: nn.Module, trained: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               precision: precision_mod.Precision, loss_fn: LossFn, grad_clip: float, images: torch.Tensor,
               masks: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
    """One optimiser step on a batch, the forward under ``precision``; returns the loss. ``net`` runs the forward
    (DDP's wrapper in several processes), ``trained`` holds the weights whose gradients are clipped."""
    with precision.autocast():
        loss = loss_fn(as_float(net(images)), images, masks, *extra)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(trained.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss


def fit(model: nn.Module, train_set: SegmentationSet, val_images: np.ndarray, val_masks: np.ndarray,
        cfg: TrainParams, loss_fn: LossFn, device: torch.device, live: Any, resume_path: Path,
        run_id: str, desc: str = "train") -> FitResult:
    """Train ``model`` in place under ``cfg.precision``; return the best weights by val Dice and the per-epoch
    history. Validation runs in fp32 whatever the training precision, so val Dice scores the weights as they are
    saved and exported."""
    precision = precision_mod.resolve(cfg.precision, device)
    seed_everything(cfg.seed)
    fmt = memory_format(device)
    model.to(device, memory_format=fmt)
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ParamsError(f"train.batch_size: {cfg.batch_size} is larger than the training set ({len(train_set)})")
    local_batch = distributed.local_batch_size(cfg.batch_size)
    net = distributed.parallel(model, cfg.distributed, device)  # the step's forward: DDP averages the gradients
    trained = distributed.unwrap(net)  # the weights stepped, validated and saved (model itself in one process)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.scheduler == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=5)
    else:
        total = cfg.epochs * steps_per_epoch
        warmup = cfg.warmup_epochs * steps_per_epoch
        factor = (lambda s: lr_factor(s, warmup, total)) if cfg.scheduler == "cosine" else (lambda s: 1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = precision.grad_scaler()
    # the weight average is what gets validated and kept: it smooths the epoch-to-epoch swings of a small val set
    ema = AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    evaluated = trained if ema is None else ema.module

    result = FitResult(copy.deepcopy(trained.state_dict()), 0, {"dice": float("nan")}, 0)
    best_score = -math.inf
    start_epoch, elapsed = 0, 0.0
    # rank 0 reads the resume file and sends it: every rank resumes from the same state, with or without a shared disk
    if (resumed := distributed.from_main(lambda: _load_resume(resume_path, run_id))) is not None:
        trained.load_state_dict(resumed["model"])
        if ema is not None:
            ema.load_state_dict(resumed["ema"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        torch.set_rng_state(resumed["torch_rng"])
        result, start_epoch, elapsed = resumed["result"], resumed["epoch"] + 1, resumed["result"].seconds
        best_score = _score(result.best)
        for row in result.history:  # the dvclive folder is a stage output, so DVC removed it: replay the curves
            _log(live, row)
        if distributed.is_main():
            print(f"{desc}: resuming after epoch {start_epoch} from {resume_path}")

    started = time.perf_counter() - elapsed
    for epoch in range(start_epoch, cfg.epochs):
        train_set.set_epoch(epoch)
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed * 10_000 + epoch))
        # each rank its share of the same global batches (in one process: all of them, in this order)
        mine = distributed.shard(order.tolist(), cfg.batch_size, distributed.rank(), distributed.world_size())
        loader = DataLoader(train_set, batch_size=local_batch, sampler=mine, drop_last=True,
                            num_workers=cfg.workers, worker_init_fn=_worker_init)
        trained.train()
        losses = []
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   disable=not distributed.is_main())
        for images, masks, *extra in bar:
            images, masks, extra = images.to(device), masks.to(device), [e.to(device) for e in extra]
            images = images.contiguous(memory_format=fmt)
            loss = train_step(net, trained, optimizer, scaler, precision, loss_fn, cfg.grad_clip, images, masks,
                              *extra)
            if cfg.scheduler != "plateau":
                scheduler.step()
            if ema is not None:
                ema.update_parameters(trained)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")

        # validated on rank 0 and sent to all, so every rank takes the same best-epoch and stopping decisions
        val = distributed.from_main(lambda: validate(evaluated, val_images, val_masks, loss_fn, device, cfg.threshold))
        if cfg.scheduler == "plateau":
            scheduler.step(val["dice"])
        row = {"epoch": epoch + 1, "train_loss": distributed.mean(float(np.mean(losses))), "val_loss": val["loss"],
               "val_dice": val["dice"], "val_iou": val["iou"], "val_normal_clean": val["normal_clean"],
               "val_presence_auc": val["presence_auc"],
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        result.history.append(row)
        _log(live, row)
        if _score(val) > best_score:
            best_score = _score(val)
            result.best, result.best_epoch = val, epoch + 1
            result.best_state = {k: v.detach().cpu().clone() for k, v in evaluated.state_dict().items()}
        result.epochs_run, result.seconds = epoch + 1, row["seconds"]
        if distributed.is_main():
            tqdm.write(f"{desc} epoch {epoch + 1:3d}  loss {row['train_loss']:.4f}  val loss {val['loss']:.4f}  "
                       f"val dice {val['dice']:.4f}  iou {val['iou']:.4f}  auc {val['presence_auc']:.3f}  "
                       f"best {result.best['dice']:.4f} "
                       f"(epoch {result.best_epoch})  {row['seconds'] / 60:.1f} min")
            _save_resume(resume_path, run_id, trained, ema, optimizer, scheduler, result, epoch)
        if cfg.patience and epoch + 1 - result.best_epoch >= cfg.patience:
            if distributed.is_main():
                tqdm.write(f"{desc}: no better val Dice for {cfg.patience} epochs, stopping early")
            break

    # rank 0's best weights on every rank: BatchNorm statistics differ between ranks without sync_bn, and pruning
    # must see the same network everywhere
    result.best_state = distributed.from_main(lambda: result.best_state)
    model.load_state_dict(result.best_state)
    return result


def fit_and_save(params: Params, cfg: TrainParams, model: nn.Module, loss_fn: LossFn, data_dir: Path,
                 split_csv: Path, out: Path, live_dir: Path, resume: Path, rid: str, kind: str,
                 soft: np.ndarray | None = None, scores: np.ndarray | None = None) -> dict:
    """Train ``model`` on the train split under ``cfg``, keep the best val epoch, save it; return a summary.

    ``soft``: per-image maps of the train split that the loss gets with each batch (cached teacher logits);
    ``scores``: per-image values it gets after them (cached teacher presence logits)."""
    device = select_device(cfg.device)
    precision = precision_mod.resolve(cfg.precision, device)  # refused before the data is read, not after
    threads = configure_cpu(cfg.threads)
    mode = params.preprocess.normalize
    train_x, train_y, _ = load_split(data_dir, split_csv, "train", mode)
    val_x, val_y, _ = load_split(data_dir, split_csv, "val", mode)
    config = cfg.model.config()
    if distributed.is_main():
        ranks = f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
        print(f"{kind}: {config['name']} {count_parameters(model):,} params on {device} in {precision.name} "
              f"({threads} threads{ranks}), "
              f"{len(train_x)} train / {len(val_x)} val images at {params.preprocess.size}px")

    with open_live(live_dir) as live:
        # soft maps are indexed like the images, so every rank's share of a batch gets its own samples' maps
        train_set = SegmentationSet(train_x, train_y, Augment(cfg.augment), cfg.seed, soft, scores)
        result = fit(model, train_set, val_x, val_y, cfg, loss_fn, device, live, resume, rid, desc=kind)

    meta = metadata.model_meta(params, config, kind, rid) | {"epoch": result.best_epoch, "val": result.best}
    model.cpu()
    if distributed.is_main():
        checkpoint.save(out, model, meta)
        resume.unlink(missing_ok=True)  # finished: a later run with the same params starts afresh
    return {
        "model": config["name"], "params": count_parameters(model),
        "gmacs": round(count_macs(model, params.preprocess.size) / 1e9, 4),
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "val_dice": round(result.best["dice"], 4), "val_iou": round(result.best["iou"], 4),
        "val_normal_clean": round(result.best["normal_clean"], 4),
        "val_presence_auc": round(result.best.get("presence_auc", float("nan")), 4),
        "train_minutes": round(result.seconds / 60, 2), "device": device.type, **precision.record(),
    }


def open_live(folder: Path) -> contextlib.AbstractContextManager:
    """The stage's dvclive logger on rank 0; on the other ranks, which log nothing, ``None``."""
    if not distributed.is_main():
        return contextlib.nullcontext()
    return Live(str(folder), dvcyaml=None, save_dvc_exp=False, report=None)


def _score(val: dict[str, float]) -> float:
    """Val Dice for model selection; a val set without lesions (Dice NaN) keeps the first epoch."""
    return val["dice"] if math.isfinite(val["dice"]) else -1.0


def _log(live: Any, row: dict[str, float]) -> None:
    if live is None:  # a rank other than 0
        return
    for key, value in row.items():
        if key != "epoch":
            live.log_metric(key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key, value)
    live.next_step()


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _save_resume(path: Path, run_id: str, model, ema, optimizer, scheduler, result: FitResult, epoch: int) -> None:
    state = {"run_id": run_id, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "result": result,
             "ema": None if ema is None else ema.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_resume(path: Path, run_id: str) -> dict[str, Any] | None:
    """The resume state of an interrupted run with the same ``run_id`` (params hash), else None."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: holds a FitResult
    if state.get("run_id") != run_id:
        print(f"{path}: left by a run with other params; starting afresh")
        return None
    return state
