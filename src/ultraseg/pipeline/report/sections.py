"""REPORT.md, generated from the metrics files the stages wrote, so the report cannot drift from them.

Every table names the file it comes from; the header names the commit and params the run used. A missing metrics
file is an error, never a silently shorter report.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import yaml

from ultraseg import params as params_mod
from ultraseg.params import LossParams, Params
from ultraseg.variants import DEPLOYED


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
                               text=True, check=True).stdout  # not stripped: " M path" has a meaningful space
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    # dvc repro has just rewritten the tracked metrics and dvc.lock, so only changes to code and params count
    code_dirty = [line for line in dirty.splitlines()
                  if line and not line[3:].startswith(("metrics/", "dvc.lock", "dvclive/", "plots/", "REPORT.md"))]
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
    """The teacher's run, and every learning curve (``plots/report/learning_curves.png``, drawn by the stage)."""
    m = params.train.model
    return f"""## Teacher training

Source: `metrics/train.json`, curves in `dvclive/train` (`dvc plots show`). Model `{train['model']}` widths
{list(m.widths)}, {m.norm} normalisation, {train['params']:,} parameters, {train['gmacs']} GMAC at
{params.preprocess.size} px; loss
{', '.join(f'{k} {v:g}' for k, v in params_mod.to_dict(params.train.loss).items() if k in ('bce', 'dice', 'focal', 'tversky') and v)};
{train['epochs_run']} epochs run, best val epoch {train['best_epoch']}, {train['train_minutes']} min on {train['device']}.

| val Dice (lesion images) | val IoU | normal val images predicted clean |
|---|---|---|
| {train['val_dice']:.4f} | {train['val_iou']:.4f} | {train['val_normal_clean']:.3f} |

![learning curves: teacher, students with and without distillation (the second from this run with `distill.baseline` on, else from the no-distillation lever run against it, when there is one), pruning rounds (dotted: a new round)](plots/report/learning_curves.png)
"""


def _augment_parts(a) -> str:
    """``train.augment`` in words: the parts that are on, then the scanner-like parts that are off."""
    if not a.enabled:
        return "none (`train.augment.enabled: false`)"
    parts = {f"flips, rotation ±{a.rotate:g}°": a.hflip or a.rotate,
             f"zoom {1 - a.scale:.2f}–{1 + a.scale:.2f}": a.scale, f"width stretch ±{a.aspect:.0%}": a.aspect,
             "gain, contrast and gamma": a.intensity_p,
             f"speckle CV {a.speckle:g} (grain up to {a.speckle_grain:g} px) on {a.speckle_p:.0%}": a.speckle_p,
             "acoustic shadows": a.shadow_p,
             f"a convex probe's fan-shaped field of view on {a.sector_p:.0%}": a.sector_p,
             f"burned-in calipers and text on {a.annotations_p:.0%}, normal images included": a.annotations_p}
    on = [text for text, value in parts.items() if value]
    off = [name for name, value in (("width stretch", a.aspect), ("burned-in marks", a.annotations_p)) if not value]
    return "; ".join(on) + (f" ({' and '.join(off)} off in this run)" if off else "")


NORM_REASONS = {
    "batch": "running statistics learned over BUSI's batches, which another scanner's gain and speckle no longer "
             "match",
    "group": "each image's own statistics over groups of channels: nothing learned about BUSI's scanner sits in "
             "running statistics",
    "instance": "each image's own statistics, channel by channel: nothing learned about BUSI's scanner sits in "
                "running statistics, so another scanner's gain, speckle and field of view are normalised away "
                "within the frame",
}
"""Why each ``norm`` of the teacher does or does not carry BUSI's scanner into another's frames."""


def _empty_note(loss: LossParams) -> str:
    if not loss.empty:
        return ""
    return (f"\n  The `empty` term is cross-entropy on the highest {loss.empty_fraction:.0%} of each normal scan's "
            "logits: a scan is clean only if its\n  highest probability stays under the deployment gate, which "
            "pixel-mean BCE barely sees and soft Dice on an\n  empty mask stops pressing on once any blob exists.")


def design_section(params: Params) -> str:
    """Why the run is configured as it is: loss, optimiser, augmentation and the student, from the params."""
    t, a, st = params.train, params.train.augment, params.distill.student
    loss = ", ".join(f"{k} ×{v:g}" for k, v in params_mod.to_dict(t.loss).items()
                     if k in ("bce", "dice", "focal", "tversky", "empty") and v)
    return f"""## Design choices

From `params.yaml`; README's stage notes hold the longer reasons.

- **Loss: {loss}.** Soft Dice per image weighs a small lesion as much as a large one, as the headline metric does;
  BCE keeps gradients on normal images, where Dice is undefined, so the model learns to leave them empty.{_empty_note(t.loss)}
- **Optimiser: AdamW**, lr {t.lr:g}, weight decay {t.weight_decay:g}, {t.scheduler} schedule with
  {t.warmup_epochs} warm-up epochs, gradient clipping at {t.grad_clip:g}, batch {t.batch_size}, {t.epochs} epochs
  with early stopping on val Dice (patience {t.patience}); the epoch of best val Dice is kept.
- **Teacher normalisation: {t.model.norm}**, {NORM_REASONS[t.model.norm]}. The student keeps
  {st.norm} normalisation{", which folds into its convolutions for int8" if st.norm == "batch" else ""}.
- **Augmentation** (train split only, seeded per sample): {_augment_parts(a)}. Zoom, width stretch, speckle
  grain, the fan and the marks imitate other scanners, so that what the model learns transfers: BUSI's own quirks
  (one hospital's settings, burned-in marks beside many lesions, squashed frames) are exactly what another site
  lacks. The evaluation shifts of *Scanner shifts* are a separate, fixed-severity code path.
- **Student:** a `{st.name}` with widths {list(st.widths)} working at 1/{st.stem_stride} of the input resolution
  (a patchify stem and a pixel-shuffle head), plain convolutions, nearest up-sampling. int8 speeds up plain 3×3 and
  1×1 convolutions with at least 16 output channels on this CPU, but not depthwise ones, and `ConvTranspose` and
  bilinear `Resize` stay float; a full-resolution U-Net small enough to be fast keeps only 4–8 channels in its
  outer levels, where int8 runs slower than fp32. So the student has no layer at full resolution, and after pruning
  every layer keeps 16 or more channels.
"""


def optimisation_section(train: dict, distill: dict, prune: dict, export: dict, quant: dict) -> str:
    p50 = quant["latency_p50_ms_1thread"]
    distilled = distill.get("kept", "distilled") == "distilled"
    student_dice = distill["student" if distilled else "baseline"]["val_dice"]
    rows = [
        ["teacher", f"{export['teacher']['params']:,}", export["teacher"]["gmacs"],
         f"{export['teacher']['bytes'] / 1e6:.2f}", f"{train['val_dice']:.4f}", f"{p50['teacher_onnx_fp32']:.2f}"],
        [f"student ({'distilled' if distilled else 'no distillation'})", f"{export['student']['params']:,}",
         export["student"]["gmacs"], f"{export['student']['bytes'] / 1e6:.2f}", f"{student_dice:.4f}", "–"],
        ["pruned student, fp32", f"{export['pruned']['params']:,}", export["pruned"]["gmacs"],
         f"{export['pruned']['bytes'] / 1e6:.2f}", f"{quant['val_dice_fp32']:.4f}", f"{p50['fp32']:.2f}"],
        ["pruned student, int8", f"{export['pruned']['params']:,}", export["pruned"]["gmacs"],
         f"{quant['int8_bytes'] / 1e6:.2f}", f"{quant['val_dice_int8']:.4f}", f"{p50['int8']:.2f}"],
    ]
    baseline = distill.get("baseline")
    kd = (f"Without distillation the same student reaches val Dice {baseline['val_dice']:.4f} on the same budget "
          f"({distill['kd_gain_val_dice']:+.4f} from distillation); pruning starts from the "
          f"{'distilled student' if distilled else 'student trained without it'} (`distill.keep`)."
          if baseline else "")
    floats = ", ".join(f"{op} ×{n}" for op, n in quant["float_ops"].items()) or "none"
    return f"""## Optimisation: distill → prune → export → int8

Sources: `metrics/{{train,distill,prune,export,quantize}}.json`. Val Dice on lesion images; ONNX Runtime batch-1
latency at {quant['input_size']}×{quant['input_size']} px with 1 thread, all models timed interleaved in one run (the
teacher in PyTorch eager: {p50['teacher_eager']:.2f} ms). {kd}

{_table(['model', 'params', 'GMAC', 'file MB', 'val Dice', 'p50 ms'], rows)}

Pruning: MACs ×{prune['macs_ratio']}, params ×{prune['params_ratio']} of the student (teacher / pruned:
{prune['teacher_to_pruned_macs']}× MACs, {prune['teacher_to_pruned_params']}× params); val Dice
{prune['val_dice_before']} before, {prune['val_dice_pruned_no_finetune']} pruned in one step (BN re-measured, no fine-tuning),
{prune['val_dice_after']} after {prune['finetune_epochs_total']} epochs of fine-tuning. Ops left in float:
{floats}. The p50 column is the quantize stage's own check, all four files timed interleaved in one process at the
network's input size; the speed-ups this report quotes are the benchmark stage's (*Speed, size and memory*), where
each variant runs in a fresh process, so the two runs' ratios differ a little and neither is copied into the other.
"""


def _ci(m: dict) -> str:
    low, high = m["dice_ci95"]
    return f"{m['dice']:.4f} [{low:.3f}, {high:.3f}]"


def _num(value, fmt: str = ".4f") -> str:
    return "–" if value is None or value != value else format(value, fmt)  # NaN: undefined (see README)


def _threshold_note(m: dict) -> str:
    if m["threshold_from"] == "val":
        return "Each variant's threshold is the one of best val Dice (`evaluate.threshold: val`), never chosen on test."
    return f"Every variant used the fixed threshold {m['threshold']} from `evaluate.threshold`."


def evaluate_section(scores: dict) -> str:
    rows = []
    for name, m in scores["variants"].items():
        rows.append([name, _ci(m), _num(m["iou"]), _num(m["precision"]), _num(m["recall"]), _num(m["hd95"], ".1f"),
                     _num(m["dice_pooled"]), _num(m["by_class"]["benign"]["dice"]),
                     _num(m["by_class"]["malignant"]["dice"]), _num(m["normal_clean"], ".2f"),
                     f"{m['threshold']:.2f}"])
    first = next(iter(scores["variants"].values()))
    return f"""## Test results (held-out split)

Source: `metrics/evaluate.json`, per image `results/evaluate/cases.csv`. {scores['n_images']} test images
({first['n_lesion']} with a lesion, {first['n_normal']} normal), scored at each image's resolution in the mirror
(256 px on the long side, not BUSI's original files: see the data README);
Dice is the mean over lesion images with its bootstrap 95% CI; pooled Dice sums the pixels of all lesion images
(what papers that pool report); HD95 in pixels of the mirror's images; *normal clean*: share of normal images
with no predicted pixel. {_threshold_note(first)}
ONNX variants ran in ONNX Runtime: `pruned_int8` is scored as an edge device would run it.

{_table(['variant', 'Dice [95% CI]', 'IoU', 'precision', 'recall', 'HD95 px', 'pooled Dice', 'benign',
         'malignant', 'normal clean', 'threshold'], rows)}
{by_source_table(scores)}
![test Dice per image](plots/evaluate/dice_distribution.png)

![val threshold curves](plots/evaluate/threshold_curve.png)

![Dice against lesion size](plots/evaluate/dice_vs_size.png)

![best, median and worst lesion cases and two normal images: the deployable file, the teacher and the int8 model](plots/evaluate/samples.png)
"""


def by_source_table(scores: dict) -> str:
    """Lesion Dice and normal clean of every variant on each source's test images, when there are several."""
    sources = list(next(iter(scores["variants"].values())).get("by_source", {}))
    if not sources:
        return ""
    rows = [[name, *(_source_cell(m["by_source"][s]) for s in sources)] for name, m in scores["variants"].items()]
    counts = ", ".join(f"{s}: {m['n_lesion']} lesion + {m['n_normal']} normal"
                       for s, m in next(iter(scores["variants"].values()))["by_source"].items())
    return f"\nBy source ({counts} test images):\n\n{_table(['variant', *sources], rows)}\n"


def _source_cell(m: dict) -> str:
    dice = _ci(m) if m["n_lesion"] else "–"
    return f"{dice}; clean {_num(m['normal_clean'], '.2f')}"


def _rate(r: dict) -> str:
    low, high = r["ci95"]
    return f"{r['n']} ({_num(r['rate'], '.0%')}; {_num(low, '.0%')}–{_num(high, '.0%')})"


def failures_section(scores: dict) -> str:
    """Missed lesions and false alarms per variant with Wilson CIs, and HD95 with the misses it leaves out."""
    rows = []
    for name, m in scores["variants"].items():
        f = m["failures"]
        rows.append([name, _rate(f["missed"]), _rate(f["sensitivity"]), _rate(f["false_alarms"]),
                     _rate(f["normal_clean"]), f"{_num(m['hd95'], '.1f')} ({m['hd95_nan']} left out)"])
    first = next(iter(scores["variants"].values()))
    return f"""## How the models fail

Source: `metrics/evaluate.json` (`failures`). Test split: {first['n_lesion']} lesion images, {first['n_normal']}
normal images. A *missed lesion* is a lesion image whose prediction is empty or has Dice below 0.1; *sensitivity*
counts lesion images whose prediction touches the lesion at all; a *false alarm* is a normal image with any
predicted pixel (the rest are *normal clean*, the image-level specificity). Counts with the rate and its Wilson
95% CI. HD95 is the mean over the lesion images that have one (a prediction and a reference), with the number of
lesion images it leaves out: read the two together.

{_table(['variant', 'missed lesions', 'sensitivity', 'false alarms', 'normal clean', 'HD95 px (left out)'], rows)}
"""


def paired_section(scores: dict) -> str:
    """What each optimisation step cost, as a paired CI of the per-image Dice difference."""
    rows = [[f"`{name}`", step["step"], f"{step['mean_diff']:+.4f}",
             f"[{step['ci95'][0]:+.4f}, {step['ci95'][1]:+.4f}]",
             "yes" if step["distinguishable"] else "no (CI holds 0)"] for name, step in scores["paired"].items()]
    return f"""## What each step cost, paired

Source: `metrics/evaluate.json` (`paired`). The two models of each row are scored on the same test lesion images;
the paired bootstrap resamples images and keeps each image's two scores together, so an image that is hard for both
does not widen the interval. A step's loss is distinguishable from zero when its CI excludes zero.

{_table(['after − before', 'step', 'mean Dice difference', '95% CI', 'distinguishable from 0'], rows)}
"""


def benchmark_section(bench: dict, scores: dict) -> str:
    keys = [k for k in next(iter(bench["variants"].values())) if k.startswith("threads_")]
    batch = bench["settings"]["batch"]
    rows = []
    for name, b in bench["variants"].items():
        timing = []
        for key in keys:
            t = b[key]
            timing += [f"{t['p50_ms']:.2f} / {t['p95_ms']:.2f}", f"{t[f'batch{batch}_images_per_s']:.0f}"]
        rows.append([name, b["runtime"], b["precision"], f"{b['params']:,}", b["gmacs"], f"{b['file_mb']:.2f}",
                     *timing, f"{b['peak_rss_mb']:.0f} ({b['model_rss_mb']:+.0f})",
                     f"{max(b[k]['disturbance'] for k in keys):.2f}",
                     _num(scores["variants"].get(name, {}).get("dice"))])
    header = ["variant", "runtime", "precision", "params", "GMAC", "file MB"]
    for key in keys:
        label = key.replace("threads_", "") + (" thread" if key == "threads_1" else " threads")
        header += [f"p50 / p95 ms, {label}", f"img/s batch {batch}, {label}"]
    header += ["peak RSS MB (model)", "disturbance", "test Dice"]
    env = bench["environment"]
    speed = bench["speedups"]
    lines = []
    for key in keys:
        eager, ort = speed.get(f"vs_teacher_{key}", {}), speed.get(f"vs_teacher_onnx_{key}", {})
        if DEPLOYED in eager:
            lines.append(f"- {key.replace('_', ' ')}: `{DEPLOYED}` is {eager[DEPLOYED]}× faster than the "
                         f"teacher in PyTorch eager and {ort.get(DEPLOYED, '–')}× faster than the teacher in "
                         f"ONNX Runtime fp32.")
    return f"""## Speed, size and memory

Source: `metrics/benchmark.json`. {env['cpu']}, {env['cores']} cores; torch {env['torch']}, onnxruntime
{env['onnxruntime']}, Python {env['python']}. Input {'×'.join(map(str, bench['input']))}; batch-1 p50/p95 over
{bench['settings']['runs']} calls after {bench['settings']['warmup']} warm-up calls, throughput at batch {batch};
every variant in a fresh process (peak RSS, and in brackets what loading and running the model added).
*disturbance*: the largest share of the machine's CPU time other processes used during a timed block (blocks
above {bench['settings']['max_disturbance']} were repeated up to {bench['settings']['retries']} times). All
variants were timed in one run: compare them by ratio, not with another run's absolute times.

{_table(header, rows)}

{chr(10).join(lines)}

![test Dice against latency](plots/benchmark/tradeoff.png)

![file size and latency](plots/benchmark/size_latency.png)
"""


def deployable_section(deploy: dict, scores: dict, bench: dict) -> str:
    """The file users run: its rule (chosen on val), what the rule does on val and test, and its end-to-end cost."""
    rule, chosen, plain = deploy["postprocess"], deploy["val_chosen"], deploy["val_threshold_only"]
    deployed, int8 = scores["variants"]["deployed"], scores["variants"][DEPLOYED]
    flipped = deploy.get("val_threshold_only_flip")
    rows = [["val, best threshold alone", plain["threshold"], _num(plain["dice"]), _num(plain["normal_clean"])],
            *([["val, best threshold alone, flip-averaged", flipped["threshold"], _num(flipped["dice"]),
                _num(flipped["normal_clean"])]] if flipped else []),
            [f"val, deployed rule{', flip-averaged' if deploy.get('flip') else ''}", rule["threshold"],
             _num(chosen["dice"]), _num(chosen["normal_clean"])],
            [f"test, `{DEPLOYED}` (threshold from val, no post-processing)", _num(int8["threshold"], ".2f"),
             _num(int8["dice"]), _num(int8["normal_clean"])],
            ["test, deployed file through the runtime", rule["threshold"], _num(deployed["dice"]),
             _num(deployed["normal_clean"])]]
    end, seed = bench["end_to_end"], bench["seed_unet"]
    frames = [[name, "×".join(str(v) for v in f["frame_hw"]), _num(f["preprocess_p50_ms"], ".3f"),
               _num(f["model_p50_ms"], ".3f"), _num(f["postprocess_p50_ms"], ".3f"), _num(f["p50_ms"], ".3f")]
              for name, f in end["frames"].items()]
    return f"""## The deployable file

Sources: `metrics/deploy.json`, `metrics/evaluate.json` (`deployed`), `metrics/benchmark.json` (`end_to_end`,
`seed_unet`). `models/deploy/ultraseg.int8.onnx` is the int8 model with everything a user needs in its metadata:
preprocessing, input size, normalisation, and the threshold and post-processing rule the deploy stage chose on val
(among {deploy['rules_tried']} rules, the one leaving the most normal val images clean within
{deploy['dice_tolerance']} of the best val lesion Dice): threshold {rule['threshold']}, gate {rule['gate']},
smallest lesion {rule['min_area']} of the image, keep largest {str(rule['keep_largest']).lower()}; averaged over a
left-right flip: {str(deploy.get('flip', False)).lower()} (the flip, a second model call per frame, is tried on val
only where `deploy.flips` allows it, and kept only when it wins there). The evaluate stage scores the file through the same runtime the command line and the viewer use.

{_table(['scored on', 'threshold', 'lesion Dice', 'normal clean'], rows)}
{operating_points_table(deploy)}
End to end through the torch-free runtime (one thread, p50 in ms; the process holding the runtime alone peaked at
{end['peak_rss_mb']} MB):

{_table(['frame', 'size', 'preprocess', 'model', 'post-process', 'total'], frames)}

The seed-size U-Net (widths {seed['model']['widths']}, {seed['input'][-1]} px, PyTorch eager fp32, untrained:
speed does not depend on the weights) takes {seed['p50_ms']} ms per call in the same run:
the deployable file is **{bench['speedup_end_to_end_vs_seed_unet']}×** faster end to end.
"""


def operating_points_table(deploy: dict) -> str:
    """The val rules no other rule beats on both lesion Dice and clean normals: what another tolerance would buy."""
    points = deploy.get("val_operating_points")
    if not points:
        return ""
    best, rule = max(p["dice"] for p in points), deploy["postprocess"]
    rows = [[_num(p["normal_clean"], ".2f"), _num(p["dice"]), _num(best - p["dice"]), p["threshold"], p["gate"],
             p["min_area"], str(p["keep_largest"]).lower(),
             "deployed" if {k: p[k] for k in rule} == rule else ""] for p in points]
    return f"""
The trade-off the rule was chosen on (`val_operating_points`, {deploy['val_images']} val images): every rule of the
grid that no other beats on both val lesion Dice and clean normal scans. A larger `deploy.dice_tolerance` moves the
choice up this list, buying clean normal scans with lesion Dice:

{_table(['normal clean (val)', 'lesion Dice (val)', 'Dice given up', 'threshold', 'gate', 'smallest lesion',
         'keep largest', ''], rows)}
"""


def robustness_section(rob: dict) -> str:
    """Dice under each simulated scanner shift, per model, and the summary per severity."""
    models = list(rob["models"])
    levels = rob["severities"]
    rows = []
    for shift, info in rob["shifts"].items():
        cells = [f"{_num(rob['models'][m]['shifts'][shift][lv]['dice'], '.3f')} "
                 f"({rob['models'][m]['shifts'][shift][lv]['missed']:.0%})" for m in models for lv in levels]
        rows.append([f"{shift} ({', '.join(str(v) for v in info['levels'])})", *cells])
    rows.append(["none", *[f"{_num(rob['models'][m]['clean']['dice'], '.3f')} ({rob['models'][m]['clean']['missed']:.0%})"
                           for m in models for _ in levels]])
    summary = [[m, lv, _num(rob["models"][m]["by_severity"][lv]["mean_drop"], ".3f"),
                f"{rob['models'][m]['by_severity'][lv]['worst_shift']} "
                f"({_num(rob['models'][m]['by_severity'][lv]['worst_drop'], '.3f')})",
                f"{rob['models'][m]['by_severity'][lv]['most_missed']:.0%}"] for m in models for lv in levels]
    header = ["shift (levels)", *[f"{m} {lv}" for m in models for lv in levels]]
    return f"""## Scanner shifts

Source: `metrics/robustness.json` (the robustness stage; figure `plots/robustness/dice_drop.png`). The test split
({rob['n_images']} images) under simulated shifts of another scanner at three severities (`ultraseg.shifts`: seeded
evaluation transforms at each image's own resolution, the geometry applied to the reference too), the teacher's ONNX
file and the deployable file both through the runtime. Lesion Dice, and in brackets the share of lesion images where
the model predicts nothing.

{_table(header, rows)}

{_table(['model', 'severity', 'mean Dice drop', 'worst shift (drop)', 'most lesions predicted empty'], summary)}
"""


def published_section(scores: dict) -> str:
    teacher, deployed = scores["variants"]["teacher"], scores["variants"]["deployed"]
    return f"""## Compared with published BUSI results

Our headline is the teacher's test Dice {teacher['dice']:.4f} (pooled {teacher['dice_pooled']:.4f}) and the deployed
file's {deployed['dice']:.4f}: the int8 model with the post-processing chosen on val (`metrics/evaluate.json`).
Published U-Net results on BUSI are not directly comparable, and most are optimistic relative to this protocol:

- **Duplicates.** BUSI holds many near-duplicate scans of one lesion (see *Dataset*); a random image-level
  split puts copies of a test lesion into training. Our groups never cross splits. The project brief puts
  U-Nets under such strict protocols at about 0.71–0.74; that range is the brief's and is not checked here against
  one source. Works that find and remove BUSI's duplicates before scoring include Pawłowska et al., *Data in Brief*
  48 (2023) 109247, and Musah et al., arXiv:2508.17768 (2025); their protocols differ from ours, so their numbers
  are not quoted. Random image-level splits report more.
- **Held-out test.** Model, threshold and post-processing were chosen on val only; test chose nothing.
- **Normals.** Many papers drop the normal images; we train on them and report them separately (*normal
  clean*), since a deployed model sees normal scans too. Our Dice means cover lesion images only.
- **Resolution.** We score at the mirror's resolution (256 px on the long side), after resizing predictions
  back from the network's input size, where many papers score at the network's resized masks.
"""


def _pruning_note(prune: dict) -> str:
    if prune["macs_ratio"] >= 1:
        return "Pruning was off in this run (`prune.ratio: 0`)."
    return (f"Removing channels from the trained student took val Dice from {prune['val_dice_before']} to "
            f"{prune['val_dice_pruned_no_finetune']} in one step with the BatchNorm statistics re-measured and no "
            f"fine-tuning, and to {prune['val_dice_after']} after {prune['finetune_epochs_total']} epochs of "
            "fine-tuning with the distillation loss in steps (`metrics/prune.json`).")


def challenges_section(split: dict, distill: dict, prune: dict, quant: dict, scores: dict) -> str:
    v = scores["variants"]
    teacher, deployed = v["teacher"], v[DEPLOYED]
    gain = distill.get("kd_gain_val_dice")
    kd = ("distillation was not measured against a baseline in this run (`distill.baseline: false`); the "
          "`no-distillation` lever of `scripts/experiments.py --grid levers` measures it as a `dvc exp` run "
          "(*Accuracy levers*)" if gain is None else
          f"distillation changed the student's val Dice by {gain:+.4f} against the same student trained on the "
          f"masks alone (`metrics/distill.json`); "
          + ("at this budget the teacher's soft targets help" if gain > 0 else
             "at this budget they do not help, and the report says so rather than assuming a gain"))
    floats = ", ".join(f"{op} ×{n}" for op, n in quant["float_ops"].items()) or "none"
    return f"""## Challenges and what would improve the results

- **Duplicates.** {split['images_in_duplicate_groups']} of {split['images']} images sit in
  {split['duplicate_groups']} groups of copies of one scan, {split['cross_class_groups']} of them filed under more
  than one class. A random split would leak them into test; grouping them costs nothing at training time.
- **Distillation.** {kd[0].upper() + kd[1:]}.
- **Pruning.** {_pruning_note(prune)}
- **int8.** Val Dice fp32 {quant['val_dice_fp32']} → int8 {quant['val_dice_int8']}; ops left in float: {floats}.
- **Normal images.** On test, the teacher leaves {teacher['normal_clean']:.0%} of normal images clean, the int8
  model {deployed['normal_clean']:.0%} and the deployed file, with the gate and post-processing chosen on val,
  {v['deployed']['normal_clean']:.0%}; the rest get spurious lesion pixels. Val holds few normal images to choose
  the rule on; a higher loss weight on normal images, or an image-level score trained for it, would attack the
  false alarms in the model rather than after it.
- **Transfer to other scanners.** Other scanners' zoom, frame shape, speckle grain, field of view and burned-in
  marks are each a `train.augment` knob (*Design choices* lists which are on), and *Scanner shifts* measures what
  is left. This report still measures
  BUSI only: score your own labelled scans with `ultraseg evaluate-folder` or `evaluate.external`
  (`metrics/external.json`) before trusting the model on them.
"""


def experiments_section(comp: dict | None) -> str:
    if comp is None:
        return """## Experiments: filters and architectures

No comparison recorded yet: `python scripts/experiments.py --run --collect` runs the grid with `dvc exp run` and
writes `experiments/comparison.json`, which this section renders.
"""
    rows = [[name, e["filter"], e["model"], f"{e['params']:,}", e["gmacs"], _num(e["enl_ratio"], ".2f"),
             _num(e["edge_preservation"], ".3f"), f"{e['val_dice']:.4f}", f"{e['val_iou']:.4f}",
             _num(e["val_normal_clean"], ".2f"), e["best_epoch"], e["train_minutes"]]
            for name, e in comp["experiments"].items()]
    return f"""## Experiments: filters and architectures

Source: `experiments/comparison.json`, written by `{comp['command']}` from `dvc exp run` experiments derived
from commit(s) {comp['derived_from_commit']}: each changes one thing from that commit's params and trains the teacher
for {comp['epochs']} epochs (not the default's budget, so compare rows with each other, not with the tables
above). Val Dice on lesion images; ENL ratio and edge preservation β of the experiment's filter as in
*Preprocessing*.

{_table(['experiment', 'filter', 'model', 'params', 'GMAC', 'ENL ratio', 'edge β', 'val Dice', 'val IoU',
         'normal clean', 'best epoch', 'minutes'], rows)}
{_missing_note(comp)}"""


def seeds_section(seeds: dict | None) -> str:
    """Mean ± sd of the headline numbers over training seeds (scripts/experiments.py --grid seeds), if run."""
    title = "## Seed variation"
    if seeds is None:
        return f"""{title}

Not measured for this run: `python scripts/experiments.py --grid seeds --run --collect` reruns the whole pipeline
with two more training seeds through DVC's queue and writes `experiments/seeds.json`, which this section renders.
"""
    rows = [[key, f"{v['mean']:.4f} ± {v['sd']:.4f}",
             *[_num(run[key], ".4f") for run in seeds["runs"].values()]] for key, v in seeds["summary"].items()]
    return f"""{title}

Source: `experiments/seeds.json`, written by `{seeds['command']}` from `dvc exp` runs derived from commit
{seeds['derived_from_commit']}: the whole pipeline at the default budget, only the training seed changed
({seeds['n']} runs; mean ± sd). The tables above are the committed run's.
{_missing_note(seeds)}
{_table(['metrics/headline.json', 'mean ± sd', *seeds['runs']], rows)}
"""


LEVER_COLUMNS = {"teacher val": "teacher_val", "student val": "student.val_dice", "pruned val": "val_dice_after",
                 "int8 val": "val_dice_int8", "deployed val": "val_chosen.dice",
                 "normal clean (val)": "val_chosen.normal_clean",
                 "shift drop (val)": "val.deployed.by_severity.moderate.mean_drop",
                 "most missed (val)": "val.deployed.by_severity.moderate.most_missed"}
"""Column -> key of a lever run's ``val`` in experiments/levers.json (or, for the teacher's val Dice, of its
headline): what a lever is chosen by."""


def levers_section(levers: dict | None, params: Params | None = None) -> str:
    """Each accuracy lever's val effect against the committed run it was derived from (scripts/experiments.py
    --grid levers), one table per commit, newest first, and which of them ``params`` has adopted; if run."""
    title = "## Accuracy levers"
    if levers is None:
        return f"""{title}

Not measured for this run: `python scripts/experiments.py --grid levers --run --collect` runs each lever through
DVC's queue and writes `experiments/levers.json`, which this section renders.
"""
    return f"""{title}

Source: `experiments/levers.json`, written by `{levers['command']}` from `dvc exp` runs. Each lever changes one
thing from the params of the commit it was derived from and runs the whole pipeline; it is compared with that
commit's run only. A lever is chosen by the val columns only (shift drop and most missed: the deployed file on the
shifted val split at moderate severity, from `metrics/robustness.json`); the last column, the deployed file's test
lesion Dice, is there for the record, not for choosing. A row named `LEVER-sSEED` (or `seed-SEED`, the committed
params) ran at another training seed; a difference smaller than the seed spread below is no effect.
{_adopted_note(levers, params)}{"".join(_lever_table(comparison) for comparison in levers["comparisons"])}{_spread_tables(levers.get("spreads", []))}"""


def _adopted_note(levers: dict, params: Params | None) -> str:
    """The levers whose every setting (the training seed aside) this run's params hold: adopted into them."""
    if params is None:
        return ""
    current = params_mod.to_dict(params)

    def holds(key: str, value: str) -> bool:
        node = current
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return node == yaml.safe_load(value)

    adopted = {}
    for comparison in levers["comparisons"]:
        for name, run in comparison["runs"].items():
            settings = {k: v for k, v in run["changed"].items() if k != "train.seed"}
            if settings and all(holds(k, v) for k, v in settings.items()):
                adopted.setdefault(name.rpartition("-s")[0] if "train.seed" in run["changed"] else name, settings)
    if not adopted:
        return "\nNo lever is adopted into this run's params.\n"

    # each adopted lever with the adopted levers whose every setting it holds, which are then not named alone
    held = {name: [other for other, sets in adopted.items() if sets.items() < adopted[name].items()]
            for name in adopted}
    parts = {other for others in held.values() for other in others}
    names = []
    for name, sets in adopted.items():
        if name not in parts:
            holding = f", holding {' and '.join(f'`{o}`' for o in held[name])}" if held[name] else ""
            names.append(f"`{name}` ({', '.join(f'`{k}={v}`' for k, v in sets.items())}{holding})")
    return f"\nAdopted into this run's params, on the val columns and seed spread below: {'; '.join(names)}.\n"


def _spread_tables(spreads: list[dict]) -> str:
    """Mean ± sd over training seeds of the levers run at several, beside the committed params' own spread."""
    if not spreads:
        return ""
    tables = []
    for spread in spreads:
        rows = [[lever, ", ".join("committed" if seed is None else str(seed) for seed in s["seeds"]),
                 *[_mean_sd(s["test_headline" if key == "teacher_val" else "val"].get(key))
                   for key in LEVER_COLUMNS.values()], _mean_sd(s["test_headline"].get("deployed"))]
                for lever, s in spread["levers"].items()]
        tables.append(f"""
Runs pooled from commits {', '.join(spread['derived_from_commits'])} (one committed run):

{_table(['run', 'seeds', *LEVER_COLUMNS, 'deployed test'], rows)}
""")
    return f"""
### Seed spread of the levers

Mean ± sd over the training seeds each lever ran at (`committed` = the committed run's seed); the `committed` row is
the committed params' own spread, the yardstick of every other row.
{"".join(tables)}"""


def _mean_sd(summary: dict | None) -> str:
    return "–" if summary is None else f"{summary['mean']:.4f} ± {summary['sd']:.4f}"


def _lever_table(comparison: dict) -> str:
    rows = [[name, ", ".join(f"`{k}={v}`" for k, v in run["changed"].items()) or "(committed params)",
             *[_num(_lever_value(run, key), ".4f") for key in LEVER_COLUMNS.values()],
             _num((run["test_headline"] or {}).get("deployed"), ".4f")] for name, run in comparison["runs"].items()]
    return f"""
Derived from commit {comparison['derived_from_commit']}:
{_missing_note(comparison, 'No finished run against this commit, at the committed seed')}
{_table(['run', 'changed', *LEVER_COLUMNS, 'deployed test'], rows)}
"""


def _lever_value(run: dict, key: str):
    return (run["test_headline"] or {}).get(key) if key == "teacher_val" else run["val"].get(key)


def _missing_note(comp: dict, what: str = "Not run to the end in this comparison") -> str:
    missing = comp.get("missing") or []
    return f"\n{what}: {', '.join(missing)}.\n" if missing else ""


HEADLINE_DRIFT = "moderate"
"""The shift-suite severity whose mean Dice drop the headline file carries."""


def headline(scores: dict, rob: dict, bench: dict, train: dict) -> dict:
    """The numbers an experiment is judged by, for `dvc exp show` and `dvc metrics diff` (one screen), with
    short names because `dvc exp show` prints them as column headers: test lesion Dice of the ``teacher`` (and its
    ``teacher_val`` Dice), of the ``deployed`` file, and their ``gap``; the deployed file's ``normal_clean`` share
    and ``missed`` lesions (and the teacher's); the shift suite's mean Dice drop at moderate severity; the
    deployable file's end-to-end p50 ``ms`` per frame on one core and its size in ``mb``."""
    teacher, deployed = scores["variants"]["teacher"], scores["variants"]["deployed"]
    drop = {name: m["by_severity"][HEADLINE_DRIFT]["mean_drop"] for name, m in rob["models"].items()}
    end = bench["end_to_end"]["frames"]["scan"]
    return {"teacher_val": train["val_dice"], "teacher": teacher["dice"], "deployed": deployed["dice"],
            "gap": round(teacher["dice"] - deployed["dice"], 4), "normal_clean": deployed["normal_clean"],
            "missed": deployed["failures"]["missed"]["n"], "teacher_missed": teacher["failures"]["missed"]["n"],
            "shift_drop": drop["deployed"], "teacher_shift_drop": drop["teacher"],
            "ms": end["p50_ms"], "mb": bench["variants"][DEPLOYED]["file_mb"]}


def headline_file(metrics_dir: Path) -> dict:
    """``{"headline": ...}`` of :func:`headline` from the metrics files in ``metrics_dir``: one key, so that
    `dvc exp show --keep '^headline\\.'` picks exactly these columns."""
    files = [_load(metrics_dir / f"{name}.json") for name in ("evaluate", "robustness", "benchmark", "train")]
    return {"headline": headline(*files)}


LEARNING_CURVES = {
    "teacher": {"val Dice": "train/plots/metrics/val/dice.tsv", "train loss": "train/plots/metrics/train/loss.tsv",
                "val loss": "train/plots/metrics/val/loss.tsv"},
    "student, val Dice": {"distilled": "distill/plots/metrics/val/dice.tsv",
                          "without distillation": "distill_baseline/plots/metrics/val/dice.tsv"},
    "pruning rounds, val Dice": {"fine-tuning": "prune/plots/metrics/val/dice.tsv"},
}
"""Panel title -> line label -> dvclive TSV below dvclive/."""
OPTIONAL_CURVES = {"without distillation"}
"""Lines drawn only when their run happened (``distill.baseline``)."""


def _tsv(path: Path) -> tuple[list[float], list[float]]:
    lines = path.read_text().split("\n")[1:]
    pairs = [line.split("\t") for line in lines if line.strip()]
    return [float(p[0]) for p in pairs], [float(p[1]) for p in pairs]


def lever_baseline(levers_file: Path, metrics_dir: Path) -> list[list[float]] | None:
    """The val Dice curve of the student trained without distillation, from the `no-distillation` lever run against
    this very run (its committed row carries this run's student val Dice), when there is one."""
    if not levers_file.exists():
        return None
    student = _load(metrics_dir / "distill.json")["student"]["val_dice"]
    for comparison in _load(levers_file)["comparisons"]:
        runs = comparison["runs"]
        same_run = runs.get("committed", {}).get("val", {}).get("student.val_dice") == student
        if same_run and "curve" in runs.get("no-distillation", {}):
            return runs["no-distillation"]["curve"]["points"]
    return None


def learning_curves_figure(dvclive: Path, path: Path, round_epochs: int,
                           baseline: list[list[float]] | None = None) -> None:
    """The teacher's, the two students' and the pruning rounds' curves from dvclive's logs, as one PNG (readable
    offline, unlike `dvc plots show`'s page). Rounds of pruning are marked every ``round_epochs`` epochs. The student
    without distillation is drawn from its own run when this one trained it, else from ``baseline`` (a lever run's
    (step, value) points) if given."""
    from ultraseg import figures

    plt = figures.pyplot()
    fig, axes = plt.subplots(1, len(LEARNING_CURVES), figsize=(5 * len(LEARNING_CURVES), 3.6))
    for ax, (title, lines) in zip(axes, LEARNING_CURVES.items()):
        top = 0.0
        for label, rel in lines.items():
            if (dvclive / rel).exists():
                x, y = _tsv(dvclive / rel)
            elif label in OPTIONAL_CURVES and baseline is not None:
                x, y, label = [p[0] for p in baseline], [p[1] for p in baseline], f"{label} (levers run)"
            elif label in OPTIONAL_CURVES:
                continue
            else:
                raise ReportError(f"{dvclive / rel}: learning curve missing; run the stage that logs it (dvc repro)")
            ax.plot(x, y, label=label, ls="--" if "loss" in label else "-")
            top = max(top, float(np.percentile(y, 90)))
        if title.startswith("pruning"):
            for k in range(round_epochs, int(max(x)) + 1, round_epochs):
                ax.axvline(k - 0.5, color="grey", lw=0.7, ls=":")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1.25 * top)  # the first epochs' losses would flatten every later curve
        ax.legend(fontsize=7)
    fig.tight_layout()
    figures.save(fig, path)


def render(metrics_dir: Path, params: Params, params_path: Path, experiments: Path | None = None) -> str:
    split = _load(metrics_dir / "split.json")
    pre = _load(metrics_dir / "preprocess.json")
    train = _load(metrics_dir / "train.json")
    optimisation = [_load(metrics_dir / f"{name}.json") for name in ("distill", "prune", "export", "quantize")]
    scores, bench = _load(metrics_dir / "evaluate.json"), _load(metrics_dir / "benchmark.json")
    deploy, rob = _load(metrics_dir / "deploy.json"), _load(metrics_dir / "robustness.json")
    comparison = _load(experiments) if experiments is not None and experiments.exists() else None
    seeds_file = None if experiments is None else experiments.parent / "seeds.json"
    seeds = _load(seeds_file) if seeds_file is not None and seeds_file.exists() else None
    levers_file = None if experiments is None else experiments.parent / "levers.json"
    levers = _load(levers_file) if levers_file is not None and levers_file.exists() else None
    return "\n".join([
        "# ultraseg report",
        "",
        f"Generated by the `report` stage at commit {_commit()} from `metrics/*.json`, params `{params_path}` (hash "
        f"{params_mod.digest(params)}). A stage reruns only when its code, params or inputs change, so the models and "
        "metrics may come from an earlier commit's run: `dvc.lock` records what each stage ran on, and `git log "
        "dvc.lock` when. Regenerate with `dvc repro report`.",
        "Scores are means over lesion images (benign + malignant) unless stated; see README, *How results are "
        "scored*. Sections before *Test results* use train/val only; the test split chooses nothing: the evaluate "
        "stage scores it, and the robustness stage scores shifted copies of it.",
        "",
        dataset_section(split),
        preprocess_section(pre, params),
        train_section(train, params),
        design_section(params),
        experiments_section(comparison),
        optimisation_section(train, *optimisation),
        evaluate_section(scores),
        failures_section(scores),
        paired_section(scores),
        benchmark_section(bench, scores),
        deployable_section(deploy, scores, bench),
        robustness_section(rob),
        seeds_section(seeds),
        levers_section(levers, params),
        published_section(scores),
        challenges_section(split, optimisation[0], optimisation[1], optimisation[3], scores),
    ])
