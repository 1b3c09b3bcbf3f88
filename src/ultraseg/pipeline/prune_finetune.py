"""The prune-finetune stage's work: prune the distilled student step by step, fine-tuning with distillation after
each step, and check that the saved, smaller network rebuilds from its checkpoint alone."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path

import torch

from ultraseg import checkpoint, distributed, params as params_mod, training
from ultraseg.data.augment import Augment
from ultraseg.data.dataset import SegmentationSet, load_split
from ultraseg.distillation import DistillLoss, teacher_targets
from ultraseg.losses import build_loss
from ultraseg.metadata import data_files, model_meta, run_id
from ultraseg.models.registry import count_macs, count_parameters
from ultraseg.models.unet import split_outputs
from ultraseg.params import Params
from ultraseg.precision import resolve as resolve_precision
from ultraseg.pruning import calibration_batches, prune, pruned_widths, summary


def run(params: Params, data_dir: Path, split_csv: Path, teacher_path: Path, student_path: Path, out: Path,
        live_dir: Path) -> dict:
    cfg = params.prune
    budget = dataclasses.replace(params.distill.budget(params.train), epochs=cfg.finetune_epochs,
                                 lr=cfg.finetune_lr, warmup_epochs=0, patience=0)
    device = training.select_device(budget.device)
    precision = resolve_precision(budget.precision, device)  # what fit trains in, refused before any work
    training.configure_cpu(budget.threads)
    teacher, teacher_meta = checkpoint.load(teacher_path, device)
    student, student_meta = checkpoint.load(student_path, device)
    mode, size = params.preprocess.normalize, params.preprocess.size
    train_x, train_y, _ = load_split(data_dir, split_csv, "train", mode)
    val_x, val_y, _ = load_split(data_dir, split_csv, "val", mode)
    d = params.distill
    loss = DistillLoss(build_loss(d.task_loss(params.train)), teacher, d.temperature, d.task_weight, d.kd_weight,
                       d.normal_target, d.presence_weight)
    soft, scores = teacher_targets(params, teacher, train_x, device) or (None, None)
    train_set = SegmentationSet(train_x, train_y, Augment(budget.augment), budget.seed, soft, scores)
    example = torch.from_numpy(val_x[:1, None]).to(device)

    def val_dice(model) -> float:
        return round(training.validate(model, val_x, val_y, loss, device, budget.threshold)["dice"], 4)

    calibration = calibration_batches(train_x, cfg.calibration_batches, budget.batch_size, device)
    before = copy.deepcopy(student)
    batch = (torch.from_numpy(train_x[:budget.batch_size, None]).to(device),
             torch.from_numpy(train_y[:budget.batch_size, None].astype("float32")).to(device))
    one_shot = prune(copy.deepcopy(student).eval(), example, dataclasses.replace(cfg, steps=1),
                     example_batch=batch, loss_fn=loss, calibration=calibration)
    rid = run_id(params, split_csv, *data_files(data_dir), student_path) + params_mod.digest(cfg)
    with training.open_live(live_dir) as live, tempfile.TemporaryDirectory() as scratch:

        def finetune(model, step: int) -> None:
            training.fit(model, train_set, val_x, val_y, budget, loss, device, live, Path(scratch) / f"{step}.pt",
                       f"{rid}-{step}", desc=f"prune step {step + 1}/{cfg.steps}")

        training.seed_everything(budget.seed)
        pruned = prune(student.train(), example, cfg, finetune=finetune, example_batch=batch, loss_fn=loss,
                       calibration=calibration)

    after = val_dice(pruned)  # on `device`, where the teacher in the loss is
    pruned = pruned.cpu().to(memory_format=torch.contiguous_format).eval()
    meta = model_meta(params, student_meta["model"], "pruned_student", rid) | {
        "pruned_widths": pruned_widths(pruned), "prune": params_mod.to_dict(cfg), "val_dice": after}
    if distributed.is_main():  # every rank holds the same pruned network (fit ends on rank 0's weights)
        checkpoint.save(out, pruned, meta)
        _check_reload(out, pruned, example.cpu())
    sizes = summary(before.cpu(), pruned, size)
    return {
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in sizes.items()},
        "val_dice_teacher": round(teacher_meta["val"]["dice"], 4),
        "val_dice_before": round(student_meta["val"]["dice"], 4),
        "val_dice_pruned_no_finetune": val_dice(one_shot),
        "val_dice_after": meta["val_dice"],
        "teacher_to_pruned_macs": round(count_macs(teacher.cpu(), size) / count_macs(pruned, size), 2),
        "teacher_to_pruned_params": round(count_parameters(teacher) / count_parameters(pruned), 2),
        "finetune_epochs_total": cfg.steps * cfg.finetune_epochs, **precision.record(),
    }


def _check_reload(path: Path, model: torch.nn.Module, example: torch.Tensor) -> None:
    """The saved checkpoint must rebuild the same network: same widths, same output."""
    rebuilt, meta = checkpoint.load(path)
    with torch.no_grad():
        pairs = zip(split_outputs(rebuilt(example)), split_outputs(model(example)))
        same = all((a is None and b is None) or torch.allclose(a, b, atol=1e-5) for a, b in pairs)
    if not same or pruned_widths(rebuilt) != meta["pruned_widths"]:
        raise RuntimeError(f"{path}: the pruned checkpoint does not rebuild to the network that was saved")
