"""REPORT's deployment profiles: the ``edge`` file (the small int8 network) beside the ``accurate`` one (the teacher,
deployed the same way) and the teacher itself, on test, under the shift suite and end to end, with the targets each
profile is held to."""

from __future__ import annotations

from ultraseg.pipeline.report.markdown import num, table
from ultraseg.runtime.model_files import ACCURATE, DEPLOYED, PROFILE_NAMES, PROFILES

TARGETS = {"gap": 0.01, "shift_gap": 0.01, "most_missed": 0.02, "edge_ms": 3.0, "accurate_ms": 15.0}
"""Issue 30's targets: the edge profile's test Dice and moderate shift-suite mean drop within ``gap`` and
``shift_gap`` of the teacher's, at most ``most_missed`` of lesion images without a prediction under any moderate
shift, and each profile's end-to-end time on a 640 x 480 frame on one core."""
SEVERITY = "moderate"


def _row(label: str, name: str, scores: dict, rob: dict, end: dict | None) -> list[str]:
    m, shifted = scores["variants"][name], rob["models"].get(name, {}).get("by_severity", {}).get(SEVERITY, {})
    image = m.get("image_level", {})
    frames = (end or {}).get("frames", {})
    return [label, f"{m['dice']:.4f} [{m['dice_ci95'][0]:.3f}, {m['dice_ci95'][1]:.3f}]",
            str(m["failures"]["missed"]["n"]), num(image.get("auc"), ".3f"),
            f"{num(image.get('sensitivity'), '.3f')} / {num(image.get('specificity'), '.3f')}",
            num(shifted.get("mean_drop")), num(shifted.get("most_missed"), ".3f"),
            num(frames.get("scan", {}).get("p50_ms"), ".2f"), num(frames.get("scanner_640x480", {}).get("p50_ms"), ".2f")]


def targets(scores: dict, rob: dict, bench: dict) -> list[tuple[str, bool, str]]:
    """(target, met, the measured figures) of each profile target."""
    v, models = scores["variants"], rob["models"]
    edge, teacher = v[DEPLOYED]["dice"], v["teacher"]["dice"]
    drop = {n: models[n]["by_severity"][SEVERITY]["mean_drop"] for n in (DEPLOYED, "teacher")}
    missed = models[DEPLOYED]["by_severity"][SEVERITY]["most_missed"]
    ms = {n: bench[key]["frames"]["scanner_640x480"]["p50_ms"]
          for n, key in ((DEPLOYED, "end_to_end"), (ACCURATE, "end_to_end_accurate")) if key in bench}
    out = [(f"edge test Dice within {TARGETS['gap']} of the teacher's", teacher - edge <= TARGETS["gap"],
            f"{edge:.4f} against {teacher:.4f}"),
           (f"edge moderate shift-suite mean drop within {TARGETS['shift_gap']} of the teacher's",
            drop[DEPLOYED] - drop["teacher"] <= TARGETS["shift_gap"],
            f"{drop[DEPLOYED]:.4f} against {drop['teacher']:.4f}"),
           (f"edge predicts nothing on at most {TARGETS['most_missed']:.0%} of lesion images under every moderate "
            "shift", missed <= TARGETS["most_missed"], f"at most {missed:.3f}")]
    for name, limit in ((DEPLOYED, TARGETS["edge_ms"]), (ACCURATE, TARGETS["accurate_ms"])):
        if name in ms:
            out.append((f"{name} end to end on a 640 × 480 frame, one core, within {limit:g} ms", ms[name] <= limit,
                        f"{ms[name]:.2f} ms"))
    return out


def profiles_section(scores: dict, rob: dict, bench: dict, deploy_accurate: dict | None) -> str:
    """Both profiles side by side; without the accurate profile's outputs (an older run), a note saying so."""
    if ACCURATE not in scores["variants"] or deploy_accurate is None:
        return "## Deployment profiles\n\nThe accurate profile was not scored in this run (`dvc repro deploy_accurate`).\n"
    rows = [_row("edge (`deployed`)", DEPLOYED, scores, rob, bench.get("end_to_end")),
            _row("accurate", ACCURATE, scores, rob, bench.get("end_to_end_accurate")),
            _row("teacher (its val threshold, no rule)", "teacher", scores, rob, None)]
    rule = deploy_accurate["postprocess"]
    lines = "\n".join(f"- {what}: {'**met**' if met else '**not met**'} ({figures})."
                      for what, met, figures in targets(scores, rob, bench))
    return f"""## Deployment profiles

Sources: `metrics/evaluate.json` (`deployed`, `accurate`, `teacher`), `metrics/robustness.json` (at {SEVERITY}
severity), `metrics/benchmark.json` (`end_to_end`, `end_to_end_accurate`), `metrics/deploy_accurate.json`. Two
deployable files come out of the pipeline, and `predict`, `serve` and `evaluate-folder` take `--profile`:
`edge` (`{PROFILES['edge']}`, the default) is the small int8 network for one core of an edge device; `accurate`
(`{PROFILES['accurate']}`) is the fp32 teacher, deployed the same way by the `deploy_accurate` stage: its own
threshold and post-processing rule (threshold {rule['threshold']}, gate {rule['gate']}, smallest lesion
{rule['min_area']}, keep largest {str(rule['keep_largest']).lower()}), presence temperature and operating point and
out-of-distribution check, all chosen on val. Names in metrics: {', '.join(f'`{n}`' for n in PROFILE_NAMES.values())}.

{table(['model', 'test Dice [95% CI]', 'missed lesions', 'image AUC', 'sens / spec', f'{SEVERITY} shift mean drop',
        f'{SEVERITY} most missed', 'scan ms', '640×480 ms'], rows)}

End-to-end times are p50 through the torch-free runtime on one thread; the teacher row is the raw network at its val
threshold, the reference the targets compare against.

{lines}
"""
