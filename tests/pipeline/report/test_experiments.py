"""The sections of the experiments beside the pipeline: comparison, seeds and levers, or how to make each."""

from __future__ import annotations

from ultraseg import experiments as schema
from ultraseg.pipeline.report import experiments
from tests.conftest import shipped_params


def test_experiment_table_quotes_the_comparison_file_or_says_how_to_make_it() -> None:
    assert "python scripts/experiments.py --run --collect" in experiments.experiments_section(None)
    comp = {"derived_from_commit": "abc1234", "epochs": 10, "command": "python scripts/experiments.py --run "
            "--collect --epochs 10", "experiments": {"filter-lee": {
                "experiment": "filter-lee-e10", "rev": "f00", "changed": {"preprocess.filter": "lee"}, "filter": "lee",
                "model": "unet", "val_dice": 0.78123, "val_iou": 0.68, "val_normal_clean": 0.5, "best_epoch": 9,
                "epochs_run": 10, "train_minutes": 6.1, "params": 1940000, "gmacs": 0.753, "enl_ratio": 3.47,
                "edge_preservation": 0.847}}}
    text = experiments.experiments_section(comp)
    assert "| filter-lee | lee | unet | 1,940,000 | 0.753 | 3.47 | 0.847 | 0.7812 | 0.6800 | 0.50 | 9 | 6.1 |" in text
    assert "commit(s) abc1234" in text and "for 10 epochs" in text


def test_seed_section_renders_the_spread_or_says_how_to_get_it() -> None:
    assert "python scripts/experiments.py --grid seeds --run --collect" in experiments.seeds_section(None)
    seeds = {"command": "python scripts/experiments.py --grid seeds --run --collect --seeds 43 44",
             "derived_from_commit": "abc1234", "n": 2, "missing": ["seed-44"],
             "runs": {"committed (train.seed 42)": {"teacher": 0.76}, "seed-43": {"teacher": 0.74}},
             "summary": {"teacher": {"mean": 0.75, "sd": 0.0141}}}
    text = experiments.seeds_section(seeds)
    assert "| teacher | 0.7500 ± 0.0141 | 0.7600 | 0.7400 |" in text and "seed-44" in text


def test_levers_section_renders_val_columns_and_test_for_the_record() -> None:
    assert "python scripts/experiments.py --grid levers --run --collect" in experiments.levers_section(None)
    val = dict.fromkeys(schema.LEVER_COLUMNS.values(), 0.5) | {"val_chosen.dice": 0.81}
    newer = {"derived_from_commit": "abc1234", "missing": ["no-distillation"], "runs": {
        "committed": {"changed": {}, "val": val, "test_headline": {"deployed": 0.71, "teacher_val": 0.8}},
        "student-geometry": {"changed": {"distill.augment.scale": "0.35"},
                             "val": val | {"val_chosen.dice": None}, "test_headline": None}}}
    older = {"derived_from_commit": "0ld1234", "missing": [], "runs": {
        "committed": {"changed": {}, "val": {}, "test_headline": {"deployed": 0.69}}}}
    text = experiments.levers_section({"command": "python scripts/experiments.py --grid levers --run --collect",
                                  "comparisons": [newer, older]})
    assert "| committed | (committed params) | 0.8000 | 0.5000 | 0.5000 | 0.5000 | 0.8100 | 0.5000 | 0.5000 | " \
           "0.5000 | 0.5000 | 0.7100 |" in text
    assert "| student-geometry | `distill.augment.scale=0.35` | – | 0.5000 | 0.5000 | 0.5000 | – |" in text
    assert "| committed | (committed params) | – | – | – | – | – | – | – | – | – | 0.6900 |" in text
    assert text.index("commit abc1234") < text.index("no-distillation") < text.index("commit 0ld1234")
    assert "No finished run against this commit, at the committed seed: no-distillation." in text


def test_levers_section_renders_the_seed_spread_of_levers_run_at_several_seeds() -> None:
    def spread(mean: float) -> dict:
        val = {key: {"mean": mean, "sd": 0.01} for key in schema.LEVER_COLUMNS.values()}
        return {"seeds": [None, 43], "n": 2, "val": val, "test_headline": {"deployed": {"mean": 0.7, "sd": 0.02}}}

    comparison = {"derived_from_commit": "abc1234", "missing": [], "runs": {
        "committed": {"changed": {}, "val": {}, "test_headline": {"deployed": 0.71}}}}
    levers = {"command": "x", "comparisons": [comparison]}
    assert "Seed spread" not in experiments.levers_section(levers)  # one seed each: nothing to pool
    levers["spreads"] = [{"derived_from_commits": ["abc1234", "0ld1234"],
                          "levers": {"committed": spread(0.8), "scanner-augment": spread(0.75)}}]
    text = experiments.levers_section(levers)
    assert "Runs pooled from commits abc1234, 0ld1234" in text
    assert "| scanner-augment | committed, 43 | – | 0.7500 ± 0.0100 | 0.7500 ± 0.0100 |" in text
    assert text.rstrip().endswith("| 0.7000 ± 0.0200 |")


def test_levers_section_renders_the_cross_validation_of_levers_run_on_several_folds() -> None:
    val = {key: {"mean": 0.74, "sd": 0.03} for key in schema.LEVER_COLUMNS.values()}
    summary = {"folds": [0, 1, 2, 3, 4], "n": 5, "val": val, "test_headline": {"deployed": {"mean": 0.7, "sd": 0.01}}}
    comparison = {"derived_from_commit": "abc1234", "missing": [], "runs": {
        "committed": {"changed": {}, "val": {}, "test_headline": {"deployed": 0.71}}}}
    levers = {"command": "x", "comparisons": [comparison]}
    assert "Cross-validation" not in experiments.levers_section(levers)
    levers["cv"] = [{"derived_from_commits": ["abc1234"], "levers": {"scanner-augment": summary}}]
    text = experiments.levers_section(levers)
    assert "### Cross-validation of the levers" in text and "| run | folds |" in text
    assert "| scanner-augment | 0, 1, 2, 3, 4 | – | 0.7400 ± 0.0300 |" in text


def test_levers_section_names_the_levers_the_params_hold() -> None:
    runs = {"committed": {"changed": {}, "val": {}, "test_headline": None},
            "instance-norm-s43": {"changed": {"train.model.norm": "instance", "train.seed": "43"}, "val": {},
                                  "test_headline": None},
            "scanner-augment": {"changed": {"train.augment.scale": "0.25", "train.model.norm": "instance"},
                                "val": {}, "test_headline": None}}
    levers = {"command": "x", "comparisons": [{"derived_from_commit": "abc1234", "missing": [], "runs": runs}]}
    adopted = shipped_params({"train": {"model": {"norm": "instance"}}})
    text = " ".join(experiments.levers_section(levers, adopted).split())
    assert "Adopted into this run's params, on the val columns and seed spread below: `instance-norm` " \
           "(`train.model.norm=instance`)." in text and "`scanner-augment` (" not in text
    text = " ".join(experiments.levers_section(levers, shipped_params({"train": {"model": {"norm": "batch"}}})).split())
    assert "No lever is adopted into this run's params." in text
    runs["student-in"] = {"changed": {"distill.student.norm": "instance"}, "val": {}, "test_headline": None}
    runs["both"] = {"changed": {"distill.student.norm": "instance", "distill.normal_target": "background"},
                    "val": {}, "test_headline": None}
    adopted = shipped_params({"train": {"model": {"norm": "instance"}},
                                    "distill": {"student": {"norm": "instance"}, "normal_target": "background"}})
    text = " ".join(experiments.levers_section(levers, adopted).split())
    assert "`instance-norm` (`train.model.norm=instance`); `both` (`distill.student.norm=instance`, " \
           "`distill.normal_target=background`, holding `student-in`)." in text
