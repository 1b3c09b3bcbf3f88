"""The distill stage's work: distil the teacher into the student and, to measure what distillation gains, train
the same student without it (see :mod:`ultraseg.distillation`)."""

from __future__ import annotations

from pathlib import Path

import torch

from ultraseg import checkpoint, distributed, params as params_mod, training
from ultraseg.data.dataset import load_split
from ultraseg.distillation import DistillLoss, teacher_targets
from ultraseg.losses import build_loss
from ultraseg.metadata import data_files, run_id
from ultraseg.models.registry import build_model
from ultraseg.params import Params
from ultraseg.precision import resolve as resolve_precision


def run(params: Params, data_dir: Path, split_csv: Path, teacher_path: Path, out: Path, live_dir: Path,
        baseline_live_dir: Path, resume_dir: Path) -> dict:
    """Distil the teacher into the student; with ``distill.baseline`` also train the student without it."""
    cfg = params.distill
    budget = cfg.budget(params.train)
    device = training.select_device(budget.device)
    precision = resolve_precision(budget.precision, device)  # both students train in it; refused before any work
    teacher, meta = checkpoint.load(teacher_path, device)
    if device.type == "cpu":
        teacher = teacher.to(memory_format=torch.channels_last)
    task = build_loss(cfg.task_loss(params.train))
    data_rid = run_id(params, split_csv, *data_files(data_dir), teacher_path) + params_mod.digest(cfg)
    train_x, _, _ = load_split(data_dir, split_csv, "train", params.preprocess.normalize)
    soft, scores = teacher_targets(params, teacher, train_x, device) or (None, None)

    def student_run(distil: bool, target: Path, live: Path, name: str) -> dict:
        training.seed_everything(budget.seed)  # both runs start from the same initial weights
        model = build_model(budget.model.config())
        kd_weight, presence_weight = (cfg.kd_weight, cfg.presence_weight) if distil else (0.0, 0.0)
        loss = DistillLoss(task, teacher if distil else None, cfg.temperature, cfg.task_weight, kd_weight,
                           cfg.normal_target, presence_weight)
        return training.fit_and_save(params, budget, model, loss, data_dir, split_csv, target, live,
                                     resume_dir / f"{name}.pt", f"{data_rid}-{kd_weight}-{presence_weight}", name,
                                     soft=soft if distil else None, scores=scores if distil else None)

    summary = {"teacher_val_dice": meta["val"]["dice"], "temperature": cfg.temperature,
               "kd_weight": cfg.kd_weight, **precision.record(),
               "presence_weight": cfg.presence_weight,
               "student": student_run(cfg.kd_weight + cfg.presence_weight > 0, out, live_dir, "student")}
    summary["kept"] = "distilled"
    if cfg.baseline:
        scratch = resume_dir / "baseline_model.pt"
        summary["baseline"] = student_run(False, scratch, baseline_live_dir, "baseline")
        summary["kd_gain_val_dice"] = round(summary["student"]["val_dice"] - summary["baseline"]["val_dice"], 4)
        if cfg.keep == "best" and summary["kd_gain_val_dice"] < 0:
            if distributed.is_main():  # the one process that wrote the checkpoints
                scratch.replace(out)  # same folder tree, so an atomic rename: out is never half-written
            summary["kept"] = "baseline"
        scratch.unlink(missing_ok=True)
    return summary
