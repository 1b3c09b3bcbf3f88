"""REPORT's image-level answer, "is there a lesion at all": each variant's ROC AUC, sensitivity and specificity at
its val-chosen operating point and calibration on test (``image_level`` in metrics/evaluate.json), the targets met or
not, and how the answer holds under the shift suite (metrics/robustness.json)."""

from __future__ import annotations

from ultraseg.pipeline.report.markdown import num, table
from ultraseg.runtime.model_files import ACCURATE, DEPLOYED

TARGETS = {"auc": 0.97, "sensitivity": 0.95, "specificity": 0.85}
"""The image-level targets (issue 28) for the deployed file and the teacher, on test with nothing chosen on test:
ROC AUC, and specificity at an operating point that keeps sensitivity."""
JUDGED = ("teacher", DEPLOYED, ACCURATE)
"""The models the targets are stated for: the teacher and each profile's deployable file."""


def _ci(value: float, interval: list[float]) -> str:
    return f"{num(value, '.3f')} [{num(interval[0], '.3f')}, {num(interval[1], '.3f')}]"


def _row(name: str, m: dict) -> list[str]:
    image = m["image_level"]
    kind = "presence" if image["score"] == "presence" else "max pixel probability"
    return [name, kind, _ci(image["auc"], image["auc_ci95"]), _ci(image["sensitivity"], image["sensitivity_ci95"]),
            _ci(image["specificity"], image["specificity_ci95"]), num(image["threshold"], ".3f"),
            num(image["ece"], ".3f"), num(m["normal_clean"], ".3f")]


def targets_met(image: dict) -> dict[str, bool]:
    """Whether ``image`` (an ``image_level`` entry) meets each target: ``auc``, and ``point``: specificity at
    least its target with sensitivity at least its own, both at the variant's operating point. NaN meets none."""
    return {"auc": image["auc"] >= TARGETS["auc"],
            "point": image["sensitivity"] >= TARGETS["sensitivity"] and image["specificity"] >= TARGETS["specificity"]}


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def targets_note(variants: dict) -> str:
    lines = []
    for name in JUDGED:
        if name not in variants or "image_level" not in variants[name]:
            continue
        image = variants[name]["image_level"]
        met = targets_met(image)
        lines.append(f"- {name}: AUC ≥ {TARGETS['auc']}: {_verdict(met['auc'])} ({num(image['auc'], '.3f')}); "
                     f"specificity ≥ {TARGETS['specificity']} at sensitivity ≥ {TARGETS['sensitivity']}: "
                     f"{_verdict(met['point'])} (sensitivity {num(image['sensitivity'], '.3f')}, specificity "
                     f"{num(image['specificity'], '.3f')}).")
    return "\n".join(lines)


def shifts_table(rob: dict) -> str:
    """The lowest image-level AUC, sensitivity and specificity over the shifts at each severity, per model."""
    rows = [[name, level, num(s.get("lowest_auc"), ".3f"), num(s.get("lowest_sensitivity"), ".3f"),
             num(s.get("lowest_specificity"), ".3f")]
            for name, m in rob["models"].items() for level, s in m["by_severity"].items() if "lowest_auc" in s]
    if not rows:
        return ""
    clean = ", ".join(f"{name} AUC {num(m['clean'].get('auc'), '.3f')}" for name, m in rob["models"].items())
    return f"""
Under the shift suite (`metrics/robustness.json`: the runtime's score and answers, the teacher at a point chosen on
unshifted val; unshifted test: {clean}), the lowest over the shifts at each severity:

{table(['model', 'severity', 'lowest AUC', 'lowest sensitivity', 'lowest specificity'], rows)}
"""


def image_level_section(scores: dict, rob: dict) -> str:
    """The image-level answer of every variant scored, with the targets and the ROC figure."""
    variants = {name: m for name, m in scores["variants"].items() if m.get("image_level")}
    if not variants:
        return """## Image-level answer: is there a lesion at all?

Not in `metrics/evaluate.json` (written before the evaluate stage scored it): rerun `dvc repro evaluate`.
"""
    first = next(iter(variants.values()))["image_level"]
    rows = [_row(name, m) for name, m in variants.items()]
    return f"""## Image-level answer: is there a lesion at all?

Source: `metrics/evaluate.json` (`image_level` per variant), the test split's {first['n_lesion']} lesion and
{first['n_normal']} normal scans. The score is the presence head's probability, calibrated by a temperature fitted on
val, or the highest pixel probability for a network without the head; the operating point is chosen on val to keep
the sensitivity `deploy.presence.sensitivity` asks, never on test. The deployable files (`deployed`, `accurate`) are
scored by the runtime's own `score` and `lesion_present`, at the temperature and point stored in each. AUC with its bootstrap 95% CI (lesion and
normal scans resampled apart), sensitivity and specificity with Wilson 95% CIs, ECE: expected calibration error over
10 equal-width bins; normal scans clean: the share of normal scans whose mask is empty.

{table(['variant', 'score', 'ROC AUC [95% CI]', 'sensitivity [95% CI]', 'specificity [95% CI]', 'point', 'ECE',
        'normal scans clean'], rows)}

Targets on test, nothing chosen on test:

{targets_note(variants)}
{shifts_table(rob)}
![image-level ROC curves on test, the val-chosen points marked](plots/evaluate/roc.png)
"""
