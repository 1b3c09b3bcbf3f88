"""REPORT's probes, from the scripts that write them into experiments/: the teachers of several seeds against
their ensemble (scripts/ensemble_probe.py -> experiments/ensemble.json) and the student's accuracy/latency front
(scripts/student_front.py -> experiments/front.json), both GPU probes scored on val and the shifted val split, never
on test; and where a training epoch's time goes in fp32 and bf16 (scripts/epoch_profile.py ->
experiments/epoch_profile.json). A probe not run leaves its section out."""

from __future__ import annotations

from ultraseg.pipeline.report.markdown import num, table


def _ensemble_row(name: str, s: dict) -> list[str]:
    shift = s["shift"]
    return [name, num(s["threshold"], ".2f"), num(s["val_dice"]), num(s["val_presence_auc"], ".3f"),
            num(shift["mean_drop"]), num(shift["worst_drop"]), shift["worst_shift"]]


def _mean_sd(summary: dict, key: str, fmt: str = ".4f") -> str:
    return f"{summary[key]['mean']:{fmt}} ± {summary[key]['sd']:{fmt}}"


def ensemble_section(probe: dict | None, train: dict) -> str:
    """Each member and the mean-logit ensembles of the first k members, with the members' mean ± sd; ``train`` (the
    train stage's metrics) says what one teacher costs this pipeline's machine."""
    if probe is None:
        return ""
    scores, summary = probe["scores"], probe["member_summary"]
    rows = [_ensemble_row(name.replace("member_seed", "seed "), s) for name, s in scores.items()
            if name.startswith("member_")]
    rows.append(["members, mean ± sd", "", _mean_sd(summary, "val_dice"), _mean_sd(summary, "val_presence_auc", ".3f"),
                 _mean_sd(summary, "shift.mean_drop"), _mean_sd(summary, "shift.worst_drop"), ""])
    rows += [_ensemble_row(f"ensemble of the first {name.removeprefix('ensemble_first')}", s)
             for name, s in scores.items() if name.startswith("ensemble_first")]
    rows.append(_ensemble_row(f"**ensemble of {probe['members']}**", scores["ensemble"]))
    severity = scores["ensemble"]["shift"]["severity"]
    return f"""## A stronger teacher: an ensemble of seeds (GPU probe)

Source: `experiments/ensemble.json`, written by `{probe['command']}` on {probe['device']} (torch {probe['torch']},
{probe['epochs']} epochs, training precision as `train.precision: auto` chose there). {probe['members']} teachers
trained as the train stage trains, at seeds {', '.join(str(s) for s in probe['seeds'])}; each alone and the ensemble
(`ultraseg.ensemble.Ensemble`, the mean of the members' logits and presence logits) scored on val: lesion Dice at
each model's own best val threshold, the presence logit's ROC AUC, and the shift suite on val at {severity}
severity (Dice drop against unshifted val). Test is not read.

{table(['model', 'threshold', 'val Dice', 'val presence AUC', f'{severity} mean drop', f'{severity} worst drop',
        'worst shift'], rows)}

Against the members' mean, the ensemble's val Dice differs by {summary['val_dice']['ensemble_minus_mean']:+.4f} and
its mean shift drop by {summary['shift.mean_drop']['ensemble_minus_mean']:+.4f}; against the best member, its val Dice
by {summary['val_dice']['ensemble_minus_best']:+.4f}. This pipeline's own teacher took {train['train_minutes']} minutes
(`metrics/train.json`), so each member multiplies that, and the default pipeline keeps one teacher within its
40-minute `dvc repro` budget; `dvc exp run -S train.members={probe['members']}` makes the pipeline's teacher (and so
the distillation target) this ensemble.
"""


def _front_row(name: str, c: dict) -> list[str]:
    seeds = c.get("over_seeds") or {}
    spread = (f"{seeds['val_dice']['mean']:.4f} ± {seeds['val_dice']['sd']:.4f} ({seeds['seeds']})"
              if seeds.get("seeds", 0) > 1 else "one seed")
    change = ", ".join(f"{k} {v}" for k, v in c["student"].items()) or "as committed"
    return [name, change + (" (ensemble teacher)" if c["teacher"] == "ensemble" else ""), num(c["val_dice"]), spread,
            num(c["val_presence_auc"], ".3f"), num(c["shift_mean_drop"]), num(c["gmacs"], ".3f"),
            f"{num(c.get('int8_scan_p50_ms'), '.2f')} / {num(c.get('int8_scanner_640x480_p50_ms'), '.2f')}",
            num(c.get("int8_scan_ratio_to_base"), ".2f"), num(c.get("int8_speedup_scan"), ".2f")]


def front_section(front: dict | None) -> str:
    """Every student configuration on val against its end-to-end time on one thread, and the front."""
    if front is None:
        return ""
    rows = [_front_row(name, c) for name, c in front["table"].items()]
    notes = "\n".join(f"- {note}" for note in front.get("notes", []))
    return f"""## The student's accuracy/latency front (GPU probe)

Source: `experiments/front.json`, written by `scripts/student_front.py`: students trained on {front['device']}
(`{front['command']}`, then with `--student-seeds` for the seed spread), timed here with `--latency`. Each row is one
change to `distill.student`, distilled as the distill stage distils ({front['epochs']['student']} epochs) from the
teacher of seed {front['ensemble_seeds'][0]} or, where marked, from the mean-logit ensemble of the teachers of seeds
{', '.join(str(s) for s in front['ensemble_seeds'])} ({front['epochs']['teacher']} epochs each); not pruned. Val only. Time: the int8 file made deployable as the deploy stage makes it, end to end through the
runtime on one thread, p50 ms on a val scan / on it enlarged to 640 × 480; ratio: against `base` in the same
interleaved round; int8 speed-up: against the same network in fp32.

{table(['config', 'change', 'val Dice', 'over seeds', 'val AUC', 'moderate shift drop', 'GMACs', 'int8 ms',
        'ratio to base', 'int8 speed-up'], rows)}

The front ({front['front']['axes']}): {', '.join(f'`{n}`' for n in front['front']['over_seeds'])}.

{notes}
"""


def epoch_profile_section(profile: dict | None) -> str:
    """Where one training epoch of each network goes (data, step, validation), in fp32 and in bf16, from one run."""
    if profile is None:
        return ""
    rows, ratios = [], []
    for name, m in profile["models"].items():
        for precision in ("fp32", "bf16"):
            if precision in m:
                e = m[precision]
                rows.append([name, precision, num(e["full_epoch_s"], ".2f"), num(e["data_s"], ".2f"),
                             num(e["step_s"], ".2f"), num(e["validation_s"], ".2f"), f"{e['shares']['step']:.0%}"])
        if m.get("fp32_over_bf16"):
            ratios.append(f"{name} ×{m['fp32_over_bf16']['full_epoch']:.2f} per epoch "
                          f"(×{m['fp32_over_bf16']['step']:.2f} in the steps alone)")
    features = ", ".join(profile["cpu_features"]) or "none"
    verdict = ("bf16 against fp32, as fp32 time over bf16 time: " + "; ".join(ratios) + "."
               if ratios else "This CPU has no native bf16, so only fp32 was timed.")
    return f"""## Where a training epoch goes: fp32 against bf16

Source: `experiments/epoch_profile.json`, written by `python scripts/epoch_profile.py`: one epoch of each network
({profile['train_images']} train images at {profile['size']} px, then validation on {profile['val_images']}) on the
CPU with {profile['threads']} threads (CPU features seen: {features}), the precisions alternating in one run.
*data* is the wait for the next augmented batch, *step* the forward, backward and optimiser step, *validation* the
val forward in fp32. {verdict}

{table(['network', 'precision', 'epoch s', 'data s', 'step s', 'validation s', 'step share'], rows)}
"""
