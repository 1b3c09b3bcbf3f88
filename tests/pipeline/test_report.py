"""The report generator fails loudly when a metrics file is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ultraseg.pipeline import report
from tests.conftest import shipped_params


def test_missing_metrics_file_is_an_error_naming_it(tmp_path) -> None:
    (tmp_path / "split.json").write_text(json.dumps({}))
    with pytest.raises(report.ReportError, match="preprocess.json: metrics file missing"):
        report.render(tmp_path, shipped_params(), tmp_path / "params.yaml")


def test_report_stage_exits_with_one_line(tmp_path, repo_root, params_file) -> None:
    import subprocess
    import sys

    params_file(tmp_path / "params.yaml")
    result = subprocess.run([sys.executable, str(repo_root / "stages/report.py"), "--metrics", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'split.json'}: metrics file missing; "
                                                  "run the stage that writes it (dvc repro)"]


def test_test_and_speed_sections_quote_the_stage_outputs(zoo) -> None:
    from ultraseg.pipeline import benchmark, evaluate
    from ultraseg.variants import by_name

    quick = {"threads": [1], "warmup": 1, "runs": 2, "batch": 2, "batch_runs": 1, "retries": 0}
    params = shipped_params({"preprocess": {"size": zoo.size}, "evaluate": {"bootstrap": 20}, "benchmark": quick})
    variants = (by_name("teacher"), by_name("pruned_int8"))
    scores, _, _, _ = evaluate.run(params, zoo.models, zoo.data, zoo.raw, zoo.split, variants)
    bench = benchmark.run(params, zoo.models, variants)
    text = report.evaluate_section(scores) + report.benchmark_section(bench, scores)
    for name, m in scores["variants"].items():
        low, high = m["dice_ci95"]
        assert f"| {name} | {m['dice']:.4f} [{low:.3f}, {high:.3f}] |" in text
    int8 = bench["variants"]["pruned_int8"]["threads_1"]
    assert f"{int8['p50_ms']:.2f} / {int8['p95_ms']:.2f}" in text
    speedup = bench["speedups"]["vs_teacher_threads_1"]["pruned_int8"]
    assert f"`pruned_int8` is {speedup}× faster than the teacher in PyTorch eager" in text
    deployed = dict(scores["variants"]["pruned_int8"], dice=0.6543)
    published = report.published_section({"variants": {**scores["variants"], "deployed": deployed}})
    assert f"{scores['variants']['teacher']['dice']:.4f}" in published
    assert "deployed file's 0.6543" in " ".join(published.split())


def test_deployable_section_quotes_deploy_evaluate_and_benchmark(zoo, tmp_path) -> None:
    from ultraseg.pipeline import benchmark, deploy, evaluate
    from ultraseg.variants import by_name

    params = shipped_params({"preprocess": {"size": zoo.size}, "evaluate": {"bootstrap": 20},
                            "deploy": {"threshold_step": 0.25, "gates": [0.0], "min_areas": [0.0, 0.01]},
                            "benchmark": {"threads": [1], "warmup": 1, "runs": 3, "retries": 0}})
    models = tmp_path / "models"
    models.mkdir()
    (models / "pruned.int8.onnx").write_bytes((zoo.models / "pruned.int8.onnx").read_bytes())
    chosen = deploy.run(params, models / "pruned.int8.onnx", zoo.raw, zoo.split, models / "deploy" / "ultraseg.int8.onnx")
    scores, _, _, _ = evaluate.run(params, zoo.models, zoo.data, zoo.raw, zoo.split, [by_name("pruned_int8")],
                                   deployable=models / "deploy" / "ultraseg.int8.onnx")
    bench = {"end_to_end": benchmark.measure_end_to_end(models / "deploy" / "ultraseg.int8.onnx",
                                                          {"scan": np.zeros((40, 50), np.uint8)}, params.benchmark),
             "seed_unet": {"model": benchmark.SEED_UNET, "input": [1, 1, 256, 256], "p50_ms": 100.0},
             "speedup_end_to_end_vs_seed_unet": 55.5}
    text = report.deployable_section(chosen, scores, bench)
    assert f"| test, deployed file through the runtime | {chosen['postprocess']['threshold']} | " \
           f"{scores['variants']['deployed']['dice']:.4f} | " in text
    assert f"{bench['end_to_end']['frames']['scan']['p50_ms']:.3f} |" in text and "**55.5×**" in text
    front = chosen["val_operating_points"]
    assert text.count(" | deployed |") == 1 and len(front) >= 1
    assert f"| {front[0]['normal_clean']:.2f} | {front[0]['dice']:.4f} | " in text


def test_experiment_table_quotes_the_comparison_file_or_says_how_to_make_it() -> None:
    assert "python scripts/experiments.py --run --collect" in report.experiments_section(None)
    comp = {"derived_from_commit": "abc1234", "epochs": 10, "command": "python scripts/experiments.py --run "
            "--collect --epochs 10", "experiments": {"filter-lee": {
                "experiment": "filter-lee-e10", "rev": "f00", "changed": {"preprocess.filter": "lee"}, "filter": "lee",
                "model": "unet", "val_dice": 0.78123, "val_iou": 0.68, "val_normal_clean": 0.5, "best_epoch": 9,
                "epochs_run": 10, "train_minutes": 6.1, "params": 1940000, "gmacs": 0.753, "enl_ratio": 3.47,
                "edge_preservation": 0.847}}}
    text = report.experiments_section(comp)
    assert "| filter-lee | lee | unet | 1,940,000 | 0.753 | 3.47 | 0.847 | 0.7812 | 0.6800 | 0.50 | 9 | 6.1 |" in text
    assert "commit(s) abc1234" in text and "for 10 epochs" in text


@pytest.mark.parametrize(("kept", "label", "dice"), [("distilled", "student (distilled)", "0.7100"),
                                                    ("baseline", "student (no distillation)", "0.7300")])
def test_optimisation_table_names_the_student_pruning_started_from(kept, label, dice) -> None:
    model = {"params": 1000, "gmacs": 0.1, "bytes": 4000}
    export = {"teacher": model, "student": model, "pruned": model}
    distill = {"kept": kept, "student": {"val_dice": 0.71}, "baseline": {"val_dice": 0.73}, "kd_gain_val_dice": -0.02}
    prune = {"macs_ratio": 0.2, "params_ratio": 0.2, "teacher_to_pruned_macs": 20.0, "teacher_to_pruned_params": 20.0,
             "val_dice_before": 0.73, "val_dice_pruned_no_finetune": 0.3, "val_dice_after": 0.72,
             "finetune_epochs_total": 12}
    p50 = {"teacher_onnx_fp32": 20.0, "teacher_eager": 40.0, "fp32": 2.0, "int8": 3.0}
    quant = {"latency_p50_ms_1thread": p50, "val_dice_fp32": 0.72, "val_dice_int8": 0.71, "int8_bytes": 2000,
             "input_size": 128, "speedup_int8_vs_fp32": 0.67, "speedup_int8_vs_teacher_onnx": 6.67,
             "speedup_int8_vs_teacher_eager": 13.3, "float_ops": {"Conv": 3}}
    text = report.optimisation_section({"val_dice": 0.8}, distill, prune, export, quant)
    assert f"| {label} | 1,000 | 0.1 | 0.00 | {dice} | – |" in text
    started = "distilled student" if kept == "distilled" else "student trained without it"
    assert f"pruning starts from the {started}" in text


def test_failure_and_paired_sections_quote_evaluate(zoo) -> None:
    from ultraseg.pipeline import evaluate
    from ultraseg.variants import VARIANTS

    params = shipped_params({"preprocess": {"size": zoo.size}, "evaluate": {"bootstrap": 20}})
    scores, _, _, _ = evaluate.run(params, zoo.models, zoo.data, zoo.raw, zoo.split, VARIANTS)
    text = report.failures_section(scores) + report.paired_section(scores)
    for name, m in scores["variants"].items():
        missed = m["failures"]["missed"]
        assert f"| {name} | {missed['n']} ({missed['rate']:.0%}; " in text
        assert f"{m['hd95_nan']} left out)" in text
    for name, step in scores["paired"].items():
        assert f"| `{name}` | {step['step']} | {step['mean_diff']:+.4f} | [{step['ci95'][0]:+.4f}, " in text


def test_headline_holds_a_dozen_numbers_from_the_stage_files() -> None:
    failures = {"missed": {"n": 7}}
    scores = {"variants": {"teacher": {"dice": 0.76, "failures": {"missed": {"n": 1}}},
                           "deployed": {"dice": 0.73, "normal_clean": 0.69, "failures": failures},
                           "pruned_int8": {"dice": 0.72}}}
    rob = {"models": {m: {"by_severity": {"moderate": {"mean_drop": d}}} for m, d in (("teacher", 0.09),
                                                                                      ("deployed", 0.08))}}
    bench = {"end_to_end": {"frames": {"scan": {"p50_ms": 1.5}}}, "variants": {"pruned_int8": {"file_mb": 0.4}}}
    head = report.headline(scores, rob, bench, {"val_dice": 0.82})
    assert head == {"teacher_val": 0.82, "teacher": 0.76, "deployed": 0.73, "gap": 0.03, "normal_clean": 0.69,
                    "missed": 7, "teacher_missed": 1, "shift_drop": 0.08, "teacher_shift_drop": 0.09, "ms": 1.5,
                    "mb": 0.4}
    assert len(head) <= 13  # with Experiment and Created, dvc exp show stays within 15 columns


def test_learning_curves_figure_needs_every_log(tmp_path) -> None:
    for lines in report.LEARNING_CURVES.values():
        for rel in lines.values():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("step\tvalue\n0\t0.5\n1\t0.6\n2\t0.7\n")
    report.learning_curves_figure(tmp_path, tmp_path / "curves.png", round_epochs=1)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "distill/plots/metrics/val/dice.tsv").unlink()
    with pytest.raises(report.ReportError, match=r"distill/plots/metrics/val/dice\.tsv: learning curve missing"):
        report.learning_curves_figure(tmp_path, tmp_path / "curves.png", round_epochs=1)


def test_the_baseline_student_curve_comes_from_the_no_distillation_lever_of_this_run(tmp_path, monkeypatch) -> None:
    import matplotlib.axes

    (tmp_path / "distill.json").write_text(json.dumps({"student": {"val_dice": 0.79}}))
    levers = tmp_path / "levers.json"
    assert report.lever_baseline(levers, tmp_path) is None

    def comparison(student_val: float, points: list) -> dict:
        return {"runs": {"committed": {"val": {"student.val_dice": student_val}},
                         "no-distillation": {"curve": {"path": "x.tsv", "points": points}}}}
    levers.write_text(json.dumps({"comparisons": [comparison(0.7, [[0, 0.1]]), comparison(0.79, [[0, 0.3]])]}))
    assert report.lever_baseline(levers, tmp_path) == [[0, 0.3]]
    levers.write_text(json.dumps({"comparisons": [comparison(0.7, [[0, 0.1]])]}))
    assert report.lever_baseline(levers, tmp_path) is None  # another run's baseline is not this run's

    for lines in report.LEARNING_CURVES.values():
        for label, rel in lines.items():
            if label not in report.OPTIONAL_CURVES:
                (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / rel).write_text("step\tvalue\n0\t0.5\n1\t0.6\n")
    labels, plot = [], matplotlib.axes.Axes.plot

    def spy(ax, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return plot(ax, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    report.learning_curves_figure(tmp_path, tmp_path / "curves.png", 1, [[0, 0.3], [1, 0.4]])
    assert "without distillation (levers run)" in labels
    labels.clear()
    report.learning_curves_figure(tmp_path, tmp_path / "curves.png", 1)
    assert "distilled" in labels and not any(str(label).startswith("without") for label in labels)


def test_design_section_follows_the_params() -> None:
    params = shipped_params({"train": {"augment": {"scale": 0.3, "sector_p": 0.2}, "lr": 0.002}})
    text = " ".join(report.design_section(params).split())
    assert "zoom 0.70–1.30" in text and "fan-shaped field of view on 20%" in text and "lr 0.002" in text
    assert "(width stretch and burned-in marks off in this run)" in text and "width stretch ±" not in text
    marks = shipped_params({"train": {"augment": {"annotations_p": 0.3}}})
    text = " ".join(report.design_section(marks).split())
    assert "calipers and text on 30%" in text and "(width stretch off in this run)" in text
    norms = shipped_params({"train": {"model": {"norm": "instance"}}, "distill": {"student": {"norm": "group"}}})
    text = " ".join(report.design_section(norms).split())
    assert "Teacher normalisation: instance**, each image's own statistics, channel by channel" in text
    assert "The student keeps group normalisation." in text
    off = shipped_params({"train": {"augment": {"enabled": False}}})
    assert "none (`train.augment.enabled: false`)" in " ".join(report.design_section(off).split())
    assert "`empty` term" not in text and "empty ×" not in text
    empty = shipped_params({"train": {"loss": {"empty": 0.5, "empty_fraction": 0.02}}})
    text = " ".join(report.design_section(empty).split())
    assert "Loss: bce ×1, dice ×1, empty ×0.5.**" in text
    assert "cross-entropy on the highest 2% of each normal scan's logits" in text


def test_seed_section_renders_the_spread_or_says_how_to_get_it() -> None:
    assert "python scripts/experiments.py --grid seeds --run --collect" in report.seeds_section(None)
    seeds = {"command": "python scripts/experiments.py --grid seeds --run --collect --seeds 43 44",
             "derived_from_commit": "abc1234", "n": 2, "missing": ["seed-44"],
             "runs": {"committed (train.seed 42)": {"teacher": 0.76}, "seed-43": {"teacher": 0.74}},
             "summary": {"teacher": {"mean": 0.75, "sd": 0.0141}}}
    text = report.seeds_section(seeds)
    assert "| teacher | 0.7500 ± 0.0141 | 0.7600 | 0.7400 |" in text and "seed-44" in text


def test_levers_section_renders_val_columns_and_test_for_the_record() -> None:
    assert "python scripts/experiments.py --grid levers --run --collect" in report.levers_section(None)
    val = dict.fromkeys(report.LEVER_COLUMNS.values(), 0.5) | {"val_chosen.dice": 0.81}
    newer = {"derived_from_commit": "abc1234", "missing": ["no-distillation"], "runs": {
        "committed": {"changed": {}, "val": val, "test_headline": {"deployed": 0.71, "teacher_val": 0.8}},
        "student-geometry": {"changed": {"distill.augment.scale": "0.35"},
                             "val": val | {"val_chosen.dice": None}, "test_headline": None}}}
    older = {"derived_from_commit": "0ld1234", "missing": [], "runs": {
        "committed": {"changed": {}, "val": {}, "test_headline": {"deployed": 0.69}}}}
    text = report.levers_section({"command": "python scripts/experiments.py --grid levers --run --collect",
                                  "comparisons": [newer, older]})
    assert "| committed | (committed params) | 0.8000 | 0.5000 | 0.5000 | 0.5000 | 0.8100 | 0.5000 | 0.5000 | " \
           "0.5000 | 0.7100 |" in text
    assert "| student-geometry | `distill.augment.scale=0.35` | – | 0.5000 | 0.5000 | 0.5000 | – |" in text
    assert "| committed | (committed params) | – | – | – | – | – | – | – | – | 0.6900 |" in text
    assert text.index("commit abc1234") < text.index("no-distillation") < text.index("commit 0ld1234")
    assert "No finished run against this commit, at the committed seed: no-distillation." in text


def test_levers_section_renders_the_seed_spread_of_levers_run_at_several_seeds() -> None:
    def spread(mean: float) -> dict:
        val = {key: {"mean": mean, "sd": 0.01} for key in report.LEVER_COLUMNS.values()}
        return {"seeds": [None, 43], "n": 2, "val": val, "test_headline": {"deployed": {"mean": 0.7, "sd": 0.02}}}

    comparison = {"derived_from_commit": "abc1234", "missing": [], "runs": {
        "committed": {"changed": {}, "val": {}, "test_headline": {"deployed": 0.71}}}}
    levers = {"command": "x", "comparisons": [comparison]}
    assert "Seed spread" not in report.levers_section(levers)  # one seed each: nothing to pool
    levers["spreads"] = [{"derived_from_commits": ["abc1234", "0ld1234"],
                          "levers": {"committed": spread(0.8), "scanner-augment": spread(0.75)}}]
    text = report.levers_section(levers)
    assert "Runs pooled from commits abc1234, 0ld1234" in text
    assert "| scanner-augment | committed, 43 | – | 0.7500 ± 0.0100 | 0.7500 ± 0.0100 |" in text
    assert text.rstrip().endswith("| 0.7000 ± 0.0200 |")


def test_levers_section_names_the_levers_the_params_hold() -> None:
    runs = {"committed": {"changed": {}, "val": {}, "test_headline": None},
            "instance-norm-s43": {"changed": {"train.model.norm": "instance", "train.seed": "43"}, "val": {},
                                  "test_headline": None},
            "scanner-augment": {"changed": {"train.augment.scale": "0.25", "train.model.norm": "instance"},
                                "val": {}, "test_headline": None}}
    levers = {"command": "x", "comparisons": [{"derived_from_commit": "abc1234", "missing": [], "runs": runs}]}
    adopted = shipped_params({"train": {"model": {"norm": "instance"}}})
    text = " ".join(report.levers_section(levers, adopted).split())
    assert "Adopted into this run's params, on the val columns and seed spread below: `instance-norm` " \
           "(`train.model.norm=instance`)." in text and "`scanner-augment` (" not in text
    without = shipped_params({"train": {"model": {"norm": "batch"}}})
    text = " ".join(report.levers_section(levers, without).split())
    assert "No lever is adopted into this run's params." in text
    runs["student-in"] = {"changed": {"distill.student.norm": "instance"}, "val": {}, "test_headline": None}
    runs["both"] = {"changed": {"distill.student.norm": "instance", "distill.normal_target": "background"},
                    "val": {}, "test_headline": None}
    adopted = shipped_params({"train": {"model": {"norm": "instance"}},
                              "distill": {"student": {"norm": "instance"}, "normal_target": "background"}})
    text = " ".join(report.levers_section(levers, adopted).split())
    assert "`instance-norm` (`train.model.norm=instance`); `both` (`distill.student.norm=instance`, " \
           "`distill.normal_target=background`, holding `student-in`)." in text


def test_by_source_table_only_with_several_sources() -> None:
    def scored(dice: float, n_lesion: int, clean: float) -> dict:
        return {"dice": dice, "dice_ci95": [dice - 0.1, dice + 0.1], "n_lesion": n_lesion, "n_normal": 2,
                "normal_clean": clean}

    one = {"variants": {"teacher": scored(0.7, 5, 0.5)}}
    assert report.by_source_table(one) == ""
    both = {"variants": {"teacher": {**scored(0.7, 5, 0.5), "by_source": {"busi": scored(0.75, 4, 0.5),
                                                                         "siteB": scored(float("nan"), 0, 1.0)}}}}
    table = report.by_source_table(both)
    assert "busi: 4 lesion + 2 normal, siteB: 0 lesion + 2 normal" in table
    assert "| teacher | 0.7500 [0.650, 0.850]; clean 0.50 | –; clean 1.00 |" in table
