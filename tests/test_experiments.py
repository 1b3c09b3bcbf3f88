"""The experiment-results schema: the columns a lever is chosen by, run names, and how seeds are pooled."""

from __future__ import annotations

import pytest

from ultraseg import experiments


def test_val_metrics_group_every_val_column_by_the_file_it_is_read_from() -> None:
    assert experiments.VAL_METRICS == {
        "metrics/distill.json": ("student.val_dice",), "metrics/prune.json": ("val_dice_after",),
        "metrics/quantize.json": ("val_dice_int8",),
        "metrics/deploy.json": ("val_chosen.dice", "val_chosen.normal_clean", "presence.val_auc"),
        "metrics/robustness.json": ("val.deployed.by_severity.moderate.mean_drop",
                                    "val.deployed.by_severity.moderate.most_missed")}
    assert list(experiments.LEVER_COLUMNS)[0] == "teacher val"
    assert list(experiments.LEVER_COLUMNS.values())[1:] == [key for _, key in experiments.VAL_COLUMNS.values()]


def test_the_teachers_val_dice_is_read_from_the_headline_and_every_other_column_from_val() -> None:
    run = {"val": {"student.val_dice": 0.7, "teacher_val": 0.1}, "test_headline": {"teacher_val": 0.8}}
    assert experiments.lever_value(run, experiments.TEACHER_VAL) == 0.8
    assert experiments.lever_value(run, "student.val_dice") == 0.7
    assert experiments.lever_value({"val": {}, "test_headline": None}, experiments.TEACHER_VAL) is None
    spread = {"val": {"student.val_dice": {"mean": 0.7, "sd": 0.1}}, "test_headline": {}}
    assert experiments.spread_value(spread, "student.val_dice") == {"mean": 0.7, "sd": 0.1}
    assert experiments.spread_value(spread, experiments.TEACHER_VAL) is None


@pytest.mark.parametrize(("name", "decoded"), [
    ("scanner-augment", ("scanner-augment", None, None)), ("scanner-augment-s43", ("scanner-augment", 43, None)),
    ("seed-44", ("committed", 44, None)), ("committed", ("committed", None, None)),
    ("fold-3", ("committed", None, 3)), ("scanner-augment-f0", ("scanner-augment", None, 0)),
    ("normal-background-student-in", ("normal-background-student-in", None, None)),
    ("normal-background-student-in-s7", ("normal-background-student-in", 7, None))])
def test_run_names_carry_the_lever_its_training_seed_and_its_fold(name, decoded) -> None:
    assert experiments.decode_run(name) == decoded


def _run(val: float, deployed: float, ms: float = 1.0) -> dict:
    return {"val": {"val_chosen.dice": val}, "test_headline": {"deployed": deployed, "ms": ms}}


def test_runs_of_the_same_committed_run_are_pooled_across_commits_timings_aside() -> None:
    newer = {"derived_from_commit": "new", "runs": {"committed": _run(0.80, 0.70), "lever": _run(0.70, 0.60)}}
    retimed = {"derived_from_commit": "old", "runs": {"committed": _run(0.80, 0.70, ms=9.0),
                                                       "seed-43": _run(0.78, 0.68), "lever-s43": _run(0.74, 0.64)}}
    other = {"derived_from_commit": "other", "runs": {"committed": _run(0.5, 0.5), "seed-43": _run(0.4, 0.4)}}
    [pooled, alone] = experiments.spreads([newer, retimed, other])
    assert pooled["derived_from_commits"] == ["new", "old"]
    lever = pooled["levers"]["lever"]
    assert lever["seeds"] == [None, 43] and lever["val"]["val_chosen.dice"]["mean"] == pytest.approx(0.72)
    assert lever["test_headline"]["deployed"]["sd"] == pytest.approx(0.02 * 2 ** 0.5)
    assert pooled["levers"]["committed"]["val"]["val_chosen.dice"]["mean"] == pytest.approx(0.79)
    assert alone["derived_from_commits"] == ["other"] and list(alone["levers"]) == ["committed"]
    assert experiments.spreads([newer]) == []  # one seed each: nothing to pool


def test_fold_runs_pool_into_cross_validation_and_stay_out_of_the_seed_spread() -> None:
    runs = {"committed": _run(0.80, 0.70), "fold-0": _run(0.70, 0.60), "fold-1": _run(0.74, 0.62),
            "lever-f0": _run(0.72, 0.61), "lever-f1": _run(0.78, 0.63), "lever": _run(0.9, 0.9)}
    [summary] = experiments.cv([{"derived_from_commit": "new", "runs": runs}])
    assert list(summary["levers"]) == ["committed", "lever"]  # fold runs only: the fixed split is no fold
    assert summary["levers"]["committed"]["folds"] == [0, 1]
    assert summary["levers"]["lever"]["val"]["val_chosen.dice"]["mean"] == pytest.approx(0.75)
    assert experiments.spreads([{"derived_from_commit": "new", "runs": runs}]) == []
