"""The train stage's work: fit the teacher on the train split, select on val, leave test alone.

With ``train.members`` above 1 the teacher is an :class:`~ultraseg.ensemble.Ensemble`: one network per seed
(``seed``, ``seed + 1``, ...), each trained and selected on val exactly as a single teacher is, then scored on val as
one model and saved as one checkpoint. Each finished member is kept beside the resume file with its run id, so an
interrupted stage trains only the members it had not finished.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ultraseg import checkpoint, distributed, metadata, params as params_mod, training
from ultraseg.data.dataset import load_split
from ultraseg.ensemble import Ensemble
from ultraseg.io import write_json
from ultraseg.losses import build_loss
from ultraseg.metadata import data_files, run_id
from ultraseg.models.registry import build_model, count_macs, count_parameters
from ultraseg.params import Params, TrainParams


def run(params: Params, data_dir: Path, split_csv: Path, out: Path, live_dir: Path, resume: Path) -> dict:
    cfg = params.train
    criterion = build_loss(params_mod.to_dict(cfg.loss))

    def loss_fn(outputs, _images, masks):
        return criterion(outputs, masks)

    rid = run_id(params, split_csv, *data_files(data_dir))
    if cfg.members == 1:
        return fit_member(params, cfg, loss_fn, data_dir, split_csv, out, live_dir, resume, rid)
    members = []
    for k in range(cfg.members):
        member_cfg = dataclasses.replace(cfg, seed=cfg.seed + k)
        path = resume.with_name(f"{resume.stem}.member{k}.pt")
        member_rid = f"{rid}/member{k}"
        summary = distributed.from_main(lambda: finished_member(path, member_rid))
        if summary is None:  # the first member's curves are the stage's; the others' go beside them
            live = live_dir if k == 0 else live_dir / f"member{k}"
            summary = fit_member(params, member_cfg, loss_fn, data_dir, split_csv, path, live,
                                 resume.with_name(f"{resume.stem}.member{k}.resume.pt"), member_rid)
            if distributed.is_main():
                write_json(path.with_suffix(".json"), {"run_id": member_rid, "summary": summary})
        members.append(summary | {"seed": member_cfg.seed})
    if not distributed.is_main():
        return members[-1]
    return save_ensemble(params, members, loss_fn, data_dir, split_csv, out, resume, rid)


def fit_member(params: Params, cfg: TrainParams, loss_fn, data_dir: Path, split_csv: Path, out: Path,
               live_dir: Path, resume: Path, rid: str) -> dict:
    """One teacher network trained under ``cfg`` and saved to ``out``; its summary."""
    training.seed_everything(cfg.seed)
    model = build_model(cfg.model.config())
    return training.fit_and_save(params, cfg, model, loss_fn, data_dir, split_csv, out, live_dir, resume, rid,
                                 "teacher")


def finished_member(path: Path, rid: str) -> dict | None:
    """The summary of a member that an earlier, interrupted run of these params finished, or None."""
    record = path.with_suffix(".json")
    if not (path.is_file() and record.is_file()):
        return None
    saved = json.loads(record.read_text())
    return saved["summary"] if saved.get("run_id") == rid else None


def save_ensemble(params: Params, members: list[dict], loss_fn, data_dir: Path, split_csv: Path, out: Path,
                  resume: Path, rid: str) -> dict:
    """The members' ensemble, scored on val and saved to ``out`` as the teacher; the stage's summary, with each
    member's own val figures beside the ensemble's."""
    cfg = params.train
    paths = [resume.with_name(f"{resume.stem}.member{k}.pt") for k in range(len(members))]
    ensemble = Ensemble([checkpoint.load(p)[0] for p in paths])
    device = training.select_device(cfg.device)
    val_x, val_y, _ = load_split(data_dir, split_csv, "val", params.preprocess.normalize)
    val = training.validate(ensemble.to(device), val_x, val_y, loss_fn, device, cfg.threshold)
    config = cfg.model.config()
    meta = metadata.model_meta(params, config, "teacher", rid) | {
        "members": len(members), "epoch": [m["best_epoch"] for m in members], "val": val}
    checkpoint.save(out, ensemble.cpu(), meta)
    for path in paths:  # finished: a later run with the same params starts afresh
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
    first = members[0]
    return {
        "model": first["model"], "params": count_parameters(ensemble),
        "gmacs": round(count_macs(ensemble, params.preprocess.size) / 1e9, 4),
        "best_epoch": [m["best_epoch"] for m in members], "epochs_run": [m["epochs_run"] for m in members],
        "val_dice": round(val["dice"], 4), "val_iou": round(val["iou"], 4),
        "val_normal_clean": round(val["normal_clean"], 4),
        "val_presence_auc": round(val.get("presence_auc", float("nan")), 4),
        "train_minutes": round(sum(m["train_minutes"] for m in members), 2), "device": first["device"],
        "precision": first["precision"], "cpu_features": first["cpu_features"],
        "members": [{key: m[key] for key in ("seed", "best_epoch", "val_dice", "val_iou", "val_presence_auc")}
                    for m in members],
    }
