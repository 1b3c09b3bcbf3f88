"""The sections of REPORT.md about the pipeline's own run, one function per section, each from the metrics files
its stage wrote and the params the run used: a section states only what those say.
"""

from __future__ import annotations

from ultraseg import params as params_mod
from ultraseg.params import LossParams, ModelParams, Params
from ultraseg.pipeline.report.markdown import ci, num, table
from ultraseg.runtime.model_files import DEPLOYED, INT8_VARIANT


def dataset_section(split: dict) -> str:
    counts = split["counts"]
    classes = ["benign", "malignant", "normal", "total"]
    rows = [[s] + [counts[s][c] for c in classes] for s in ("train", "val", "test")]
    return f"""## Dataset and duplicates

Source: `metrics/split.json`. {split['images']} images; {split['duplicate_groups']} groups of near-duplicate scans
hold {split['images_in_duplicate_groups']} images (largest group {split['largest_group']}; {split['exact_pairs']}
pixel-identical pairs, {split['near_pairs']} near-duplicate links); {split['cross_class_groups']} groups mix
classes. Groups are never split across train/val/test.

{table(['split'] + classes, rows)}
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

{table(['filter', 'ENL ratio', 'edge preservation β', 'ms / image'], rows)}

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
{train['epochs_run']} epochs run, best val epoch {train['best_epoch']}, {train['train_minutes']} min on {train['device']}{_precision(train)}.

| val Dice (lesion images) | val IoU | normal val images predicted clean |
|---|---|---|
| {train['val_dice']:.4f} | {train['val_iou']:.4f} | {train['val_normal_clean']:.3f} |
{_members_note(train)}
![learning curves: teacher, students with and without distillation (the second from this run with `distill.baseline` on, else from the no-distillation lever run against it, when there is one), pruning rounds (dotted: a new round)](plots/report/learning_curves.png)
"""


def _members_note(train: dict) -> str:
    """For an ensemble teacher (``train.members`` above 1): its members' own val figures beside the ensemble's."""
    members = train.get("members")
    if not members:
        return ""
    rows = [[str(m["seed"]), str(m["best_epoch"]), num(m["val_dice"]), num(m["val_iou"]),
             num(m["val_presence_auc"], ".3f")] for m in members]
    mean = sum(m["val_dice"] for m in members) / len(members)
    return f"""
The teacher is an ensemble of {len(members)} networks (`train.members`), trained alike at consecutive seeds; the
table above scores the ensemble (the mean of their logits and presence logits), which distillation, export and the
accurate profile use. Its val Dice is {train['val_dice'] - mean:+.4f} against its members' mean; val presence AUC
{num(train['val_presence_auc'], '.3f')}.

{table(['member seed', 'best epoch', 'val Dice', 'val IoU', 'val presence AUC'], rows)}
"""


def _precision(run: dict) -> str:
    """" in bf16" (or fp32): the precision a training run's metrics say it used; nothing for a run that predates
    the key."""
    return f" in {run['precision']}" if "precision" in run else ""


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


BLOCK_WORDS = {"double": "plain convolutions", "residual": "residual blocks",
               "separable": "depthwise-separable convolutions"}
UP_WORDS = {"nearest": "nearest up-sampling", "bilinear": "bilinear up-sampling",
            "transpose": "transposed-convolution up-sampling"}
"""``block`` and ``up`` of a :class:`~ultraseg.params.ModelParams` in words."""


def _network(m: ModelParams) -> str:
    """A network's params in words: name, widths, the resolution it works at, blocks, up-sampling, attention."""
    where = ("working at the input resolution" if m.stem_stride == 1 else
             f"working at 1/{m.stem_stride} of the input resolution\n  (a patchify stem and a pixel-shuffle head)")
    block = BLOCK_WORDS[m.block] if m.block else f"the `{m.name}` variant's own blocks"
    attention = {True: ", attention gates", False: ", no attention gates", None: ""}[m.attention]
    return f"a `{m.name}` with widths {list(m.widths)} {where}, {block}, {UP_WORDS[m.up]}{attention}"


def _int8_fit(m: ModelParams) -> str:
    """What the student's params mean for int8, by the rules the design bullet states."""
    parts = ["has no layer at full resolution" if m.stem_stride > 1 else "keeps its outer level at full resolution"]
    if m.block == "separable":
        parts.append("its depthwise convolutions gain nothing from int8")
    if m.up in ("transpose", "bilinear"):
        parts.append(f"its {'`ConvTranspose`' if m.up == 'transpose' else 'bilinear `Resize`'} up-sampling stays "
                     "float")
    return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]


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
- **Student:** {_network(st)}. int8 speeds up plain 3×3 and
  1×1 convolutions with at least {params.quantize.min_channels} output channels (`quantize.min_channels`), but not
  depthwise ones, and `ConvTranspose` and bilinear `Resize` stay float; a full-resolution U-Net small enough to be
  fast keeps only 4–8 channels in its outer levels, where int8 runs slower than fp32. So the student {_int8_fit(st)}.
"""


def _distilled_in(distill: dict) -> str:
    return f" The student was distilled in {distill['precision']}." if "precision" in distill else ""


def _remeasured(params: Params) -> bool:
    """Whether pruning measured the student's norm statistics again (only BatchNorm keeps running statistics)."""
    return params.distill.student.norm == "batch" and params.prune.calibration_batches > 0


def _narrow_note(quant: dict, params: Params) -> str:
    """How many convolutions are too narrow for int8 and stay float (``metrics/quantize.json``), when recorded."""
    if "narrow_convs_float" not in quant:
        return ""
    n, floor = quant["narrow_convs_float"], params.quantize.min_channels
    return (f" After pruning no convolution has fewer than the {floor} output channels int8 needs "
            "(`quantize.min_channels`)." if n == 0 else
            f" After pruning {n} convolutions have fewer than {floor} output channels (`quantize.min_channels`) and "
            "stay float.")


def optimisation_section(train: dict, distill: dict, prune: dict, export: dict, quant: dict, params: Params) -> str:
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
teacher in PyTorch eager: {p50['teacher_eager']:.2f} ms).{_distilled_in(distill)} {kd}

{table(['model', 'params', 'GMAC', 'file MB', 'val Dice', 'p50 ms'], rows)}

Pruning: MACs ×{prune['macs_ratio']}, params ×{prune['params_ratio']} of the student (teacher / pruned:
{prune['teacher_to_pruned_macs']}× MACs, {prune['teacher_to_pruned_params']}× params); val Dice
{prune['val_dice_before']} before, {prune['val_dice_pruned_no_finetune']} pruned in one step ({'BN re-measured, ' if _remeasured(params) else ''}no fine-tuning),
{prune['val_dice_after']} after {prune['finetune_epochs_total']} epochs of fine-tuning{_precision(prune)}. Ops left in float:
{floats}.{_narrow_note(quant, params)} The p50 column is the quantize stage's own check, all four files timed interleaved in one process at the
network's input size; the speed-ups this report quotes are the benchmark stage's (*Speed, size and memory*), where
each variant runs in a fresh process, so the two runs' ratios differ a little and neither is copied into the other.
"""


def _threshold_note(m: dict) -> str:
    if m["threshold_from"] == "val":
        return "Each variant's threshold is the one of best val Dice (`evaluate.threshold: val`), never chosen on test."
    return f"Every variant used the fixed threshold {m['threshold']} from `evaluate.threshold`."


def evaluate_section(scores: dict) -> str:
    rows = []
    for name, m in scores["variants"].items():
        rows.append([name, ci(m), num(m["iou"]), num(m["precision"]), num(m["recall"]), num(m["hd95"], ".1f"),
                     num(m["dice_pooled"]), num(m["by_class"]["benign"]["dice"]),
                     num(m["by_class"]["malignant"]["dice"]), num(m["normal_clean"], ".2f"),
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

{table(['variant', 'Dice [95% CI]', 'IoU', 'precision', 'recall', 'HD95 px', 'pooled Dice', 'benign',
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
    return f"\nBy source ({counts} test images):\n\n{table(['variant', *sources], rows)}\n"


def _source_cell(m: dict) -> str:
    dice = ci(m) if m["n_lesion"] else "–"
    return f"{dice}; clean {num(m['normal_clean'], '.2f')}"


def _rate(r: dict) -> str:
    low, high = r["ci95"]
    return f"{r['n']} ({num(r['rate'], '.0%')}; {num(low, '.0%')}–{num(high, '.0%')})"


def failures_section(scores: dict) -> str:
    """Missed lesions and false alarms per variant with Wilson CIs, and HD95 with the misses it leaves out."""
    rows = []
    for name, m in scores["variants"].items():
        f = m["failures"]
        rows.append([name, _rate(f["missed"]), _rate(f["sensitivity"]), _rate(f["false_alarms"]),
                     _rate(f["normal_clean"]), f"{num(m['hd95'], '.1f')} ({m['hd95_nan']} left out)"])
    first = next(iter(scores["variants"].values()))
    return f"""## How the models fail

Source: `metrics/evaluate.json` (`failures`). Test split: {first['n_lesion']} lesion images, {first['n_normal']}
normal images. A *missed lesion* is a lesion image whose prediction is empty or has Dice below 0.1; *sensitivity*
counts lesion images whose prediction touches the lesion at all; a *false alarm* is a normal image with any
predicted pixel (the rest are *normal clean*, the image-level specificity). Counts with the rate and its Wilson
95% CI. HD95 is the mean over the lesion images that have one (a prediction and a reference), with the number of
lesion images it leaves out: read the two together.

{table(['variant', 'missed lesions', 'sensitivity', 'false alarms', 'normal clean', 'HD95 px (left out)'], rows)}
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

{table(['after − before', 'step', 'mean Dice difference', '95% CI', 'distinguishable from 0'], rows)}
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
                     num(scores["variants"].get(name, {}).get("dice"))])
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
        if INT8_VARIANT in eager:
            lines.append(f"- {key.replace('_', ' ')}: `{INT8_VARIANT}` is {eager[INT8_VARIANT]}× faster than the "
                         f"teacher in PyTorch eager and {ort.get(INT8_VARIANT, '–')}× faster than the teacher in "
                         f"ONNX Runtime fp32.")
    return f"""## Speed, size and memory

Source: `metrics/benchmark.json`. {env['cpu']}, {env['cores']} cores; torch {env['torch']}, onnxruntime
{env['onnxruntime']}, Python {env['python']}. Input {'×'.join(map(str, bench['input']))}; batch-1 p50/p95 over
{bench['settings']['runs']} calls after {bench['settings']['warmup']} warm-up calls, throughput at batch {batch};
every variant in a fresh process (peak RSS, and in brackets what loading and running the model added).
*disturbance*: the largest share of the machine's CPU time other processes used during a timed block (blocks
above {bench['settings']['max_disturbance']} were repeated up to {bench['settings']['retries']} times). All
variants were timed in one run: compare them by ratio, not with another run's absolute times.

{table(header, rows)}

{chr(10).join(lines)}
{training_steps_note(bench)}
![test Dice against latency](plots/benchmark/tradeoff.png)

![file size and latency](plots/benchmark/size_latency.png)
"""


def training_steps_note(bench: dict) -> str:
    """One training step of each network in fp32 and in bf16 (autocast), timed in one run, and their ratio; or that
    this CPU has no bf16, with the CPU features the benchmark saw. Nothing for a benchmark that did not time them."""
    steps = bench.get("training_steps")
    if steps is None:
        return ""
    features = ", ".join(steps["cpu_features"]) or "none"
    if not steps["bf16_supported"]:
        fp32 = "; ".join(f"{name} {num(steps[name]['fp32_ms'], '.1f')} ms" for name in ("teacher", "student"))
        return (f"\nTraining step (`training_steps`): one optimiser step in fp32 takes {fp32}; bf16 is not "
                f"supported on this CPU (CPU features seen: {features}), so `train.precision: auto` trains in fp32.\n")
    rows = [[name, num(steps[name]["fp32_ms"], ".1f"), num(steps[name]["bf16_ms"], ".1f"),
             num(steps[name]["speedup"], ".2f")] for name in ("teacher", "student")]
    return f"""
Training step (`training_steps`): one optimiser step of each network in fp32 and under bf16 autocast, timed in
one run (CPU features seen: {features}). The ratio is fp32 time over bf16 time: above 1, bf16 is faster.

{table(['network', 'fp32 ms / step', 'bf16 ms / step', 'fp32 / bf16'], rows)}
"""


def memory_note(bench: dict) -> str:
    """The end-to-end process's peak resident memory, against the goal when the benchmark records one."""
    peak, goal = bench["end_to_end"]["peak_rss_mb"], bench.get("settings", {}).get("memory_goal_mb")
    if goal is None:
        return f"the process holding the runtime alone peaked at\n{peak} MB"
    return (f"the process holding only the runtime and the deployable file peaked at\n{peak} MB, goal ≤ {goal} MB "
            f"(`benchmark.memory_goal_mb`): {'met' if peak <= goal else 'not met'}")


def deployable_section(deploy: dict, scores: dict, bench: dict) -> str:
    """The file users run: its rule (chosen on val), what the rule does on val and test, and its end-to-end cost."""
    rule, chosen, plain = deploy["postprocess"], deploy["val_chosen"], deploy["val_threshold_only"]
    deployed, int8 = scores["variants"][DEPLOYED], scores["variants"][INT8_VARIANT]
    flipped = deploy.get("val_threshold_only_flip")
    rows = [["val, best threshold alone", plain["threshold"], num(plain["dice"]), num(plain["normal_clean"])],
            *([["val, best threshold alone, flip-averaged", flipped["threshold"], num(flipped["dice"]),
                num(flipped["normal_clean"])]] if flipped else []),
            [f"val, deployed rule{', flip-averaged' if deploy.get('flip') else ''}", rule["threshold"],
             num(chosen["dice"]), num(chosen["normal_clean"])],
            [f"test, `{INT8_VARIANT}` (threshold from val, no post-processing)", num(int8["threshold"], ".2f"),
             num(int8["dice"]), num(int8["normal_clean"])],
            ["test, deployed file through the runtime", rule["threshold"], num(deployed["dice"]),
             num(deployed["normal_clean"])]]
    end, seed = bench["end_to_end"], bench["seed_unet"]
    frames = [[name, "×".join(str(v) for v in f["frame_hw"]), num(f["preprocess_p50_ms"], ".3f"),
               num(f["model_p50_ms"], ".3f"), num(f["postprocess_p50_ms"], ".3f"), num(f["p50_ms"], ".3f")]
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

{table(['scored on', 'threshold', 'lesion Dice', 'normal clean'], rows)}
{operating_points_table(deploy)}
End to end through the torch-free runtime (one thread, p50 in ms; {memory_note(bench)}):

{table(['frame', 'size', 'preprocess', 'model', 'post-process', 'total'], frames)}

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
    rows = [[num(p["normal_clean"], ".2f"), num(p["dice"]), num(best - p["dice"]), p["threshold"], p["gate"],
             p["min_area"], str(p["keep_largest"]).lower(),
             "deployed" if {k: p[k] for k in rule} == rule else ""] for p in points]
    return f"""
The trade-off the rule was chosen on (`val_operating_points`, {deploy['val_images']} val images): every rule of the
grid that no other beats on both val lesion Dice and clean normal scans. A larger `deploy.dice_tolerance` moves the
choice up this list, buying clean normal scans with lesion Dice:

{table(['normal clean (val)', 'lesion Dice (val)', 'Dice given up', 'threshold', 'gate', 'smallest lesion',
         'keep largest', ''], rows)}
"""


def _count(n: int) -> str:
    return ("no", "one", "two", "three", "four", "five")[n] if n <= 5 else str(n)


def robustness_section(rob: dict) -> str:
    """Dice under each simulated scanner shift, per model, and the summary per severity."""
    models = list(rob["models"])
    levels = rob["severities"]
    rows = []
    for shift, info in rob["shifts"].items():
        cells = [f"{num(rob['models'][m]['shifts'][shift][lv]['dice'], '.3f')} "
                 f"({rob['models'][m]['shifts'][shift][lv]['missed']:.0%})" for m in models for lv in levels]
        rows.append([f"{shift} ({', '.join(str(v) for v in info['levels'])})", *cells])
    rows.append(["none", *[f"{num(rob['models'][m]['clean']['dice'], '.3f')} ({rob['models'][m]['clean']['missed']:.0%})"
                           for m in models for _ in levels]])
    summary = [[m, lv, num(rob["models"][m]["by_severity"][lv]["mean_drop"], ".3f"),
                f"{rob['models'][m]['by_severity'][lv]['worst_shift']} "
                f"({num(rob['models'][m]['by_severity'][lv]['worst_drop'], '.3f')})",
                f"{rob['models'][m]['by_severity'][lv]['most_missed']:.0%}"] for m in models for lv in levels]
    header = ["shift (levels)", *[f"{m} {lv}" for m in models for lv in levels]]
    return f"""## Scanner shifts

Source: `metrics/robustness.json` (the robustness stage; figure `plots/robustness/dice_drop.png`). The test split
({rob['n_images']} images) under simulated shifts of another scanner at {_count(len(levels))} severities (`ultraseg.shifts`: seeded
evaluation transforms at each image's own resolution, the geometry applied to the reference too), the teacher's ONNX
file and the deployable file both through the runtime. Lesion Dice, and in brackets the share of lesion images where
the model predicts nothing.

{table(header, rows)}

{table(['model', 'severity', 'mean Dice drop', 'worst shift (drop)', 'most lesions predicted empty'], summary)}
{stream_note(rob.get("stream"))}{ood_note(rob)}"""


def ood_note(rob: dict) -> str:
    """How often the deployable file answers "not a breast ultrasound frame": on the built set, on the split's scans
    and under the shifts."""
    ood = rob.get("ood")
    if not ood or not ood.get("checked"):
        return ""
    built, scans = ood["built"], ood["scans"]
    kinds = ", ".join(f"{kind} {v['flagged']:.0%} of {v['frames']}" for kind, v in built["by_kind"].items())
    moderate = rob["models"]["deployed"]["by_severity"].get("moderate", {})
    shifted = (f" Under the moderate shifts it flags at most {moderate['most_flagged']:.0%} of the shifted scans "
               "(and draws no mask on them)." if "most_flagged" in moderate else "")
    return f"""
**Not a breast ultrasound frame** (`ood` in the same file). The deployable file flags
{built['flagged']:.0%} of {built['frames']} built frames that are not breast ultrasound (`ultraseg.ood_frames`:
{kinds}) and {scans['flagged']:.1%} of the {scans['images']} {scans['split']} scans (threshold
{ood['threshold']} on the distance of the deepest features from the train scans', set on val).{shifted}
"""


def stream_note(stream: dict | None) -> str:
    """How steady each model's lesion decision is on the simulated live scan, frame by frame and smoothed."""
    if not stream:
        return ""
    models = [m for m in stream if isinstance(stream[m], dict) and "per_frame" in stream[m]]
    rule = stream[models[0]]["stream"]
    how = {"none": "each frame alone", "debounce": f"a decision changes after {rule['frames']} disagreeing frames",
           "ema": f"an exponential average of the score (newest frame weighted {rule['alpha']:g})"}[rule["method"]]
    rows = [[m, mode.replace("_", " "), num(stream[m][mode]["flips_per_100"], ".1f"),
             num(stream[m][mode]["change_lag_frames"], ".2f"), num(stream[m][mode]["accuracy"], ".3f")]
            for m in models for mode in ("per_frame", "smoothed")]
    return f"""
**A live stream** (`stream` in the same file). A simulated probe rests on {stream['split']} scans in
{stream['runs']} runs of {stream['run_frames']} frames, lesion and normal in turn, each frame drifted, re-gained and
re-noised (`ultraseg.clips`); the smoothing is `deploy.stream` ({rule['method']}: {how}), stored in the deployable
file. Flips: changes of the lesion decision per 100 frames; lag: frames from a true change until the decision
follows it.

{table(['model', 'decision', 'flips per 100 frames', 'lag (frames)', 'frames decided right'], rows)}
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


def _pruning_note(prune: dict, params: Params) -> str:
    if prune["macs_ratio"] >= 1:
        return "Pruning was off in this run (`prune.ratio: 0`)."
    remeasured = " with the BatchNorm statistics re-measured and" if _remeasured(params) else " with"
    loss = "the distillation loss" if params.distill.kd_weight else "the masks alone (`distill.kd_weight: 0`)"
    return (f"Removing channels from the trained student took val Dice from {prune['val_dice_before']} to "
            f"{prune['val_dice_pruned_no_finetune']} in one step{remeasured} no "
            f"fine-tuning, and to {prune['val_dice_after']} after {prune['finetune_epochs_total']} epochs of "
            f"fine-tuning with {loss} in steps (`metrics/prune.json`).")


def challenges_section(split: dict, distill: dict, prune: dict, quant: dict, scores: dict, params: Params) -> str:
    v = scores["variants"]
    teacher, deployed = v["teacher"], v[INT8_VARIANT]
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
- **Pruning.** {_pruning_note(prune, params)}
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
