"""REPORT.md, generated from the metrics files the stages wrote, so the report cannot drift from them.

Every table names the file it comes from; the header names the commit and params the run used. A missing metrics
file is an error, never a silently shorter report.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ultraseg import params as params_mod
from ultraseg.params import Params


class ReportError(RuntimeError):
    pass


def _load(path: Path) -> dict:
    if not path.exists():
        raise ReportError(f"{path}: metrics file missing; run the stage that writes it (dvc repro)")
    return json.loads(path.read_text())


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    # dvc repro has just rewritten the tracked metrics and dvc.lock, so only changes to code and params count
    code_dirty = [line for line in dirty.splitlines()
                  if not line[3:].startswith(("metrics/", "dvc.lock", "dvclive/", "plots/", "REPORT.md"))]
    return head.stdout.strip() + (" with uncommitted code or params changes" if code_dirty else "")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dataset_section(split: dict) -> str:
    counts = split["counts"]
    classes = ["benign", "malignant", "normal", "total"]
    rows = [[s] + [counts[s][c] for c in classes] for s in ("train", "val", "test")]
    return f"""## Dataset and duplicates

Source: `metrics/split.json`. {split['images']} images; {split['duplicate_groups']} groups of near-duplicate scans
hold {split['images_in_duplicate_groups']} images (largest group {split['largest_group']}; {split['exact_pairs']}
pixel-identical pairs, {split['near_pairs']} near-duplicate links); {split['cross_class_groups']} groups mix
classes. Groups are never split across train/val/test.

{_table(['split'] + classes, rows)}
"""


def preprocess_section(pre: dict, params: Params) -> str:
    rows = [[name, f"{v['enl_ratio']:.2f}", f"{v['edge_preservation']:.3f}", f"{v['ms_per_image']:.1f}"]
            for name, v in pre["filters"].items()]
    return f"""## Preprocessing

Source: `metrics/preprocess.json`. This run: filter `{pre['filter']}`, CLAHE
{'on' if params.preprocess.clahe.enabled else 'off'}, {params.preprocess.size} px; {pre['images']} images in
{pre['seconds']} s. Every filter on the same {pre['quality_sample']} lesion images (before CLAHE): speckle
suppression as the ENL ratio in homogeneous tissue (higher is smoother), edge preservation as Sattar's β around the
lesion boundary (1 is untouched).

{_table(['filter', 'ENL ratio', 'edge preservation β', 'ms / image'], rows)}

![every filter on one image](plots/preprocess/filters.png)
"""


def train_section(train: dict, params: Params) -> str:
    m = params.train.model
    return f"""## Teacher training

Source: `metrics/train.json`, curves in `dvclive/train` (`dvc plots show`). Model `{train['model']}` widths
{list(m.widths)}, {train['params']:,} parameters, {train['gmacs']} GMAC at {params.preprocess.size} px; loss
{', '.join(f'{k} {v:g}' for k, v in params_mod.to_dict(params.train.loss).items() if k in ('bce', 'dice', 'focal', 'tversky') and v)};
{train['epochs_run']} epochs run, best val epoch {train['best_epoch']}, {train['train_minutes']} min on {train['device']}.

| val Dice (lesion images) | val IoU | normal val images predicted clean |
|---|---|---|
| {train['val_dice']:.4f} | {train['val_iou']:.4f} | {train['val_normal_clean']:.3f} |
"""


def optimisation_section(train: dict, distill: dict, prune: dict, export: dict, quant: dict) -> str:
    p50 = quant["latency_p50_ms_1thread"]
    rows = [
        ["teacher", f"{export['teacher']['params']:,}", export["teacher"]["gmacs"],
         f"{export['teacher']['bytes'] / 1e6:.2f}", f"{train['val_dice']:.4f}", f"{p50['teacher_onnx_fp32']:.2f}"],
        ["student (distilled)", f"{export['student']['params']:,}", export["student"]["gmacs"],
         f"{export['student']['bytes'] / 1e6:.2f}", f"{distill['student']['val_dice']:.4f}", "–"],
        ["pruned student, fp32", f"{export['pruned']['params']:,}", export["pruned"]["gmacs"],
         f"{export['pruned']['bytes'] / 1e6:.2f}", f"{quant['val_dice_fp32']:.4f}", f"{p50['fp32']:.2f}"],
        ["pruned student, int8", f"{export['pruned']['params']:,}", export["pruned"]["gmacs"],
         f"{quant['int8_bytes'] / 1e6:.2f}", f"{quant['val_dice_int8']:.4f}", f"{p50['int8']:.2f}"],
    ]
    baseline = distill.get("baseline")
    kd = (f"Without distillation the same student reaches val Dice {baseline['val_dice']:.4f} on the same budget "
          f"({distill['kd_gain_val_dice']:+.4f} from distillation)." if baseline else "")
    floats = ", ".join(f"{op} ×{n}" for op, n in quant["float_ops"].items()) or "none"
    return f"""## Optimisation: distill → prune → export → int8

Sources: `metrics/{{train,distill,prune,export,quantize}}.json`. Val Dice on lesion images; ONNX Runtime batch-1
latency at {quant['input_size']}×{quant['input_size']} px with 1 thread, all models timed interleaved in one run (the
teacher in PyTorch eager: {p50['teacher_eager']:.2f} ms). {kd}

{_table(['model', 'params', 'GMAC', 'file MB', 'val Dice', 'p50 ms'], rows)}

Pruning: MACs ×{prune['macs_ratio']}, params ×{prune['params_ratio']} of the distilled student (teacher / pruned:
{prune['teacher_to_pruned_macs']}× MACs, {prune['teacher_to_pruned_params']}× params); val Dice
{prune['val_dice_before']} before, {prune['val_dice_pruned_no_finetune']} pruned without fine-tuning,
{prune['val_dice_after']} after {prune['finetune_epochs_total']} epochs of fine-tuning. int8: ×{quant['speedup_int8_vs_fp32']}
faster than fp32, ×{quant['speedup_int8_vs_teacher_onnx']} than the teacher in ONNX Runtime,
×{quant['speedup_int8_vs_teacher_eager']} than the teacher in PyTorch; ops left in float: {floats}.
"""


def render(metrics_dir: Path, params: Params, params_path: Path) -> str:
    split = _load(metrics_dir / "split.json")
    pre = _load(metrics_dir / "preprocess.json")
    train = _load(metrics_dir / "train.json")
    optimisation = [_load(metrics_dir / f"{name}.json") for name in ("distill", "prune", "export", "quantize")]
    return "\n".join([
        "# ultraseg report",
        "",
        f"Generated by the `report` stage from `metrics/*.json` of the run at commit {_commit()}, params "
        f"`{params_path}` (hash {params_mod.digest(params)}). Regenerate with `dvc repro report`.",
        "Scores are means over lesion images (benign + malignant) unless stated; see README, *How results are "
        "scored*. Test-split results arrive with the evaluate stage; everything here is train/val only.",
        "",
        dataset_section(split),
        preprocess_section(pre, params),
        train_section(train, params),
        optimisation_section(train, *optimisation),
    ])
