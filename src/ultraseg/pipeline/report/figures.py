"""The learning-curve figure of REPORT.md, drawn from dvclive's logs (and a lever run's baseline student)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ultraseg import experiments as schema
from ultraseg.pipeline.report.inputs import ReportError, load


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


STUDENT_VAL = schema.VAL_COLUMNS["student val"][1]
"""The key of a lever run's student val Dice, which ties a lever comparison to the run it was derived from."""


def lever_baseline(levers_file: Path, metrics_dir: Path) -> list[list[float]] | None:
    """The val Dice curve of the student trained without distillation, from the `no-distillation` lever run against
    this very run (its committed row carries this run's student val Dice), when there is one."""
    if not levers_file.exists():
        return None
    student = load(metrics_dir / "distill.json")["student"]["val_dice"]
    for comparison in load(levers_file)["comparisons"]:
        runs = comparison["runs"]
        same_run = schema.lever_value(runs.get(schema.COMMITTED, {}), STUDENT_VAL) == student
        if same_run and "curve" in runs.get(schema.NO_DISTILLATION, {}):
            return runs[schema.NO_DISTILLATION]["curve"]["points"]
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
