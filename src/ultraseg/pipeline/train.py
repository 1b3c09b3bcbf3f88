"""The train stage's work: fit the teacher on the train split, select on val, leave test alone."""

from __future__ import annotations

from pathlib import Path

from ultraseg import params as params_mod, training
from ultraseg.losses import build_loss
from ultraseg.metadata import data_files, run_id
from ultraseg.models.registry import build_model
from ultraseg.params import Params


def run(params: Params, data_dir: Path, split_csv: Path, out: Path, live_dir: Path, resume: Path) -> dict:
    cfg = params.train
    training.seed_everything(cfg.seed)
    model = build_model(cfg.model.config())
    criterion = build_loss(params_mod.to_dict(cfg.loss))
    rid = run_id(params, split_csv, *data_files(data_dir))
    return training.fit_and_save(params, cfg, model, lambda outputs, _x, masks: criterion(outputs, masks), data_dir,
                                 split_csv, out, live_dir, resume, rid, "teacher")
