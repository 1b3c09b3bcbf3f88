"""The learning-curve figure: every dvclive log it needs, and the lever run's baseline student when it belongs."""

from __future__ import annotations

import json

import pytest

from ultraseg.pipeline.report import ReportError, figures


def test_learning_curves_figure_needs_every_log(tmp_path) -> None:
    for lines in figures.LEARNING_CURVES.values():
        for rel in lines.values():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("step\tvalue\n0\t0.5\n1\t0.6\n2\t0.7\n")
    figures.learning_curves_figure(tmp_path, tmp_path / "curves.png", round_epochs=1)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "distill/plots/metrics/val/dice.tsv").unlink()
    with pytest.raises(ReportError, match=r"distill/plots/metrics/val/dice\.tsv: learning curve missing"):
        figures.learning_curves_figure(tmp_path, tmp_path / "curves.png", round_epochs=1)


def test_the_baseline_student_curve_comes_from_the_no_distillation_lever_of_this_run(tmp_path, monkeypatch) -> None:
    import matplotlib.axes

    (tmp_path / "distill.json").write_text(json.dumps({"student": {"val_dice": 0.79}}))
    levers = tmp_path / "levers.json"
    assert figures.lever_baseline(levers, tmp_path) is None

    def comparison(student_val: float, points: list) -> dict:
        return {"runs": {"committed": {"val": {"student.val_dice": student_val}},
                         "no-distillation": {"curve": {"path": "x.tsv", "points": points}}}}
    levers.write_text(json.dumps({"comparisons": [comparison(0.7, [[0, 0.1]]), comparison(0.79, [[0, 0.3]])]}))
    assert figures.lever_baseline(levers, tmp_path) == [[0, 0.3]]
    levers.write_text(json.dumps({"comparisons": [comparison(0.7, [[0, 0.1]])]}))
    assert figures.lever_baseline(levers, tmp_path) is None  # another run's baseline is not this run's

    for lines in figures.LEARNING_CURVES.values():
        for label, rel in lines.items():
            if label not in figures.OPTIONAL_CURVES:
                (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / rel).write_text("step\tvalue\n0\t0.5\n1\t0.6\n")
    labels, plot = [], matplotlib.axes.Axes.plot

    def spy(ax, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return plot(ax, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    figures.learning_curves_figure(tmp_path, tmp_path / "curves.png", 1, [[0, 0.3], [1, 0.4]])
    assert "without distillation (levers run)" in labels
    labels.clear()
    figures.learning_curves_figure(tmp_path, tmp_path / "curves.png", 1)
    assert "distilled" in labels and not any(str(label).startswith("without") for label in labels)
