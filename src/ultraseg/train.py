"""The train stage's work: fit the teacher on the train split, select on val, leave test alone.

:func:`fit_and_save` is shared with distillation: it trains any model under a ``TrainParams`` budget with any
loss of ``(logits, images, masks, *extra)`` (:data:`ultraseg.engine.LossFn`), logs to dvclive and writes a rebuildable
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from dvclive import Live
from torch import nn

from ultraseg import checkpoint, engine, params as params_mod
from ultraseg.data.augment import Augment
from ultraseg.data.dataset import SegmentationSet, load_split
from ultraseg.losses import build_loss
from ultraseg.models.registry import build_model, count_macs, count_parameters
from ultraseg.params import Params, TrainParams


def run_id(params: Params, *files: Path) -> str:
    """What makes two runs the same: the params that shape the model and the exact data."""
    digest = hashlib.sha256(json.dumps([params_mod.to_dict(params.train), params_mod.to_dict(params.preprocess)],
                                       sort_keys=True).encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def data_files(data_dir: Path) -> tuple[Path, ...]:
    """The preprocessed arrays and index: a resume is only valid on exactly these bytes."""
    return data_dir / "index.csv", data_dir / "images.npy", data_dir / "masks.npy"


def model_meta(params: Params, config: dict, kind: str, rid: str) -> dict:
    """What a checkpoint or ONNX file carries so it can be used without the params file."""
    return {"kind": kind, "model": config, "preprocess": params_mod.to_dict(params.preprocess),
            "normalize": params.preprocess.normalize, "size": params.preprocess.size,
            "threshold": params.train.threshold, "run_id": rid}


def fit_and_save(params: Params, cfg: TrainParams, model: nn.Module, loss_fn: engine.LossFn, data_dir: Path,
                 split_csv: Path, out: Path, live_dir: Path, resume: Path, rid: str, kind: str,
                 soft: np.ndarray | None = None) -> dict:
    """Train ``model`` on the train split under ``cfg``, keep the best val epoch, save it; return a summary.

    ``soft``: per-image maps of the train split that the loss gets with each batch (cached teacher logits)."""
    device = engine.select_device(cfg.device)
    threads = engine.configure_cpu(cfg.threads)
    mode = params.preprocess.normalize
    train_x, train_y, _ = load_split(data_dir, split_csv, "train", mode)
    val_x, val_y, _ = load_split(data_dir, split_csv, "val", mode)
    config = cfg.model.config()
    print(f"{kind}: {config['name']} {count_parameters(model):,} params on {device} ({threads} threads), "
          f"{len(train_x)} train / {len(val_x)} val images at {params.preprocess.size}px")

    with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        train_set = SegmentationSet(train_x, train_y, Augment(cfg.augment), cfg.seed, soft)
        result = engine.fit(model, train_set, val_x, val_y, cfg, loss_fn, device, live, resume, rid, desc=kind)

    meta = model_meta(params, config, kind, rid) | {"epoch": result.best_epoch, "val": result.best}
    checkpoint.save(out, model.cpu(), meta)
    resume.unlink(missing_ok=True)  # finished: a later run with the same params starts afresh
    return {
        "model": config["name"], "params": count_parameters(model),
        "gmacs": round(count_macs(model, params.preprocess.size) / 1e9, 4),
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "val_dice": round(result.best["dice"], 4), "val_iou": round(result.best["iou"], 4),
        "val_normal_clean": round(result.best["normal_clean"], 4),
        "train_minutes": round(result.seconds / 60, 2), "device": device.type,
    }


def run(params: Params, data_dir: Path, split_csv: Path, out: Path, live_dir: Path, resume: Path) -> dict:
    cfg = params.train
    engine.seed_everything(cfg.seed)
    model = build_model(cfg.model.config())
    criterion = build_loss(params_mod.to_dict(cfg.loss))
    rid = run_id(params, split_csv, *data_files(data_dir))
    return fit_and_save(params, cfg, model, lambda logits, _x, masks: criterion(logits, masks), data_dir,
                        split_csv, out, live_dir, resume, rid, "teacher")
