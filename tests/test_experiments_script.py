"""scripts/experiments.py: the levers grid collects the val numbers a lever is chosen by from `dvc exp show` rows."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import load_script


@pytest.fixture
def experiments():
    return load_script("scripts/experiments.py")


def row(name: str, deployed_val: float, **extra) -> dict:
    """One `dvc exp show` row as dvc.api.exp_show flattens it (file-prefixed where two files share a key)."""
    return {"Experiment": name, "rev": "abc1234" if not name else "f00", "headline.deployed": 0.7,
            "headline.teacher": 0.76, "val_chosen.dice": deployed_val, "student.val_dice": 0.79,
            "metrics/prune.json:val_dice_after": 0.78, "val_dice_int8": 0.77, "val_chosen.normal_clean": 0.8,
            "val.deployed.by_severity.moderate.mean_drop": 0.05,
            "val.deployed.by_severity.moderate.most_missed": 0.2, **extra}


def test_levers_are_collected_by_val_with_test_for_the_record(experiments, monkeypatch):
    rows = [{"Experiment": None, "rev": "workspace"}, row("", 0.81), row("student-geometry", 0.83),
            row("student-geometry", 0.5, **{"headline.deployed": "!"}), row("other", 0.9)]
    monkeypatch.setattr(experiments, "_rows", lambda: rows)
    monkeypatch.setattr(experiments, "_short_sha", lambda rev: rev)
    [out] = experiments.collect_levers()["comparisons"]
    assert list(out["runs"]) == ["committed", "student-geometry"]
    assert out["missing"] == [name for name in experiments.LEVERS if name != "student-geometry"]
    lever = out["runs"]["student-geometry"]
    assert lever["changed"] == experiments.LEVERS["student-geometry"]
    assert lever["val"]["val_chosen.dice"] == 0.83 and lever["val"]["val_dice_after"] == 0.78
    assert lever["test_headline"] == {"deployed": 0.7, "teacher": 0.76}
    assert out["derived_from_commit"] == "abc1234"


def test_a_headline_key_only_older_commits_have_does_not_hide_a_finished_run(experiments, monkeypatch):
    # exp_show fills a key that an older commit's headline held, and these runs' do not, with "None" or "-"
    rows = [row("", 0.81, **{"headline.normal_clean": "None"}),
            row("student-geometry", 0.83, State="Success", **{"headline.normal_clean": "-"}),
            row("no-distillation", 0.8, State="Running")]
    monkeypatch.setattr(experiments, "_rows", lambda: rows)
    monkeypatch.setattr(experiments, "_short_sha", lambda rev: rev)
    [out] = experiments.collect_levers()["comparisons"]
    assert list(out["runs"]) == ["committed", "student-geometry"]
    assert out["runs"]["student-geometry"]["test_headline"] == {"deployed": 0.7, "teacher": 0.76}


def test_the_no_distillation_lever_keeps_its_student_curve(experiments, monkeypatch):
    rows = [row("", 0.81), row("no-distillation", 0.8, rev="e1e1e1e")]
    monkeypatch.setattr(experiments, "_rows", lambda: rows)
    monkeypatch.setattr(experiments, "_short_sha", lambda rev: rev)
    shown = []

    def git_show(args, **_):
        shown.append(args)
        return subprocess.CompletedProcess(args, 0, stdout="step\tdice\n0\t0.25\n1\t0.5\n", stderr="")
    monkeypatch.setattr(experiments.subprocess, "run", git_show)
    [out] = experiments.collect_levers()["comparisons"]
    assert out["runs"]["no-distillation"]["curve"]["points"] == [[0.0, 0.25], [1.0, 0.5]]
    assert shown == [["git", "show", f"e1e1e1e:{experiments.LEVER_CURVES['no-distillation']}"]]


def test_levers_of_other_commits_are_kept_after_this_commits(experiments, monkeypatch):
    monkeypatch.setattr(experiments, "_rows", lambda: [row("", 0.81), row("student-geometry", 0.83)])
    monkeypatch.setattr(experiments, "_short_sha", lambda rev: rev)
    older = {"derived_from_commit": "0ld", "missing": [], "runs": {"committed": {}}}
    stale = {"derived_from_commit": "abc1234", "missing": [], "runs": {}}
    out = experiments.collect_levers({"command": "x", "comparisons": [stale, older]})
    assert [c["derived_from_commit"] for c in out["comparisons"]] == ["abc1234", "0ld"]
    assert out["comparisons"][0]["runs"]["student-geometry"]["val"]["val_chosen.dice"] == 0.83
    assert out["comparisons"][1] == older


def test_each_lever_is_compared_with_the_commit_it_was_derived_from(experiments, monkeypatch):
    rows = [{"Experiment": None, "rev": "workspace"}, row("", 0.81, rev="new1"), row("student-geometry", 0.83),
            row("", 0.7, rev="0ld"), row("scanner-augment", 0.6), row("student-geometry", 0.5)]
    monkeypatch.setattr(experiments, "_rows", lambda: rows)
    monkeypatch.setattr(experiments, "_short_sha", lambda rev: rev)
    new, old = experiments.collect_levers()["comparisons"]
    assert new["derived_from_commit"] == "new1" and list(new["runs"]) == ["committed", "student-geometry"]
    assert old["derived_from_commit"] == "0ld"
    assert list(old["runs"]) == ["committed", "scanner-augment", "student-geometry"]
    assert old["runs"]["committed"]["val"]["val_chosen.dice"] == 0.7
    assert old["runs"]["student-geometry"]["val"]["val_chosen.dice"] == 0.5


def test_levers_collection_refuses_when_no_lever_finished(experiments, monkeypatch):
    monkeypatch.setattr(experiments, "_rows", lambda: [row("", 0.81)])
    monkeypatch.setattr(experiments, "_short_sha", lambda rev: rev)
    with pytest.raises(SystemExit, match="no finished lever experiment"):
        experiments.collect_levers()


def test_only_names_an_experiment_of_the_grid(experiments, capsys):
    with pytest.raises(SystemExit):
        experiments.main(["--grid", "levers", "--run", "--only", "nope"])
    assert "no experiment 'nope' in the levers grid" in capsys.readouterr().err


def test_queue_workers_get_a_search_path_that_holds_in_each_experiments_copy(experiments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = experiments.absolute_search_path(f".venv/bin{os.pathsep}/usr/bin")
    assert path.split(os.pathsep) == [str(tmp_path / ".venv" / "bin"), "/usr/bin"]


def test_lever_names_carry_their_training_seed_and_fold(experiments):
    assert experiments.lever_run("scanner-augment") == ("scanner-augment", None, None)
    assert experiments.lever_run("scanner-augment-s43") == ("scanner-augment", 43, None)
    assert experiments.lever_run("scanner-augment-f2") == ("scanner-augment", None, 2)
    assert experiments.lever_run("seed-44") == ("committed", 44, None)
    assert experiments.lever_run("fold-0") == ("committed", None, 0)
    assert experiments.lever_run("committed") == ("committed", None, None)
    assert experiments.lever_run("other-s43") is None and experiments.lever_run("filter-lee-e8") is None


def test_levers_grid_with_folds_runs_each_lever_and_the_committed_params_on_each_fold(experiments):
    folded = experiments.experiments("levers", 8, [], folds=3)
    assert folded["fold-2"] == ([], {"split.fold": "2"})
    assert folded["scanner-augment-f0"] == ([], {**experiments.LEVERS["scanner-augment"], "split.fold": "0"})
    assert len(folded) == 4 * len(experiments.LEVERS) + 3


def test_folds_other_than_the_params_split_folds_are_refused(experiments, capsys):
    with pytest.raises(SystemExit):
        experiments.main(["--grid", "levers", "--run", "--folds", "3"])
    assert "split.folds: 5" in capsys.readouterr().err


def test_fold_runs_are_collected_with_their_fold_into_a_cross_validation_summary(experiments, monkeypatch):
    rows = [row("", 0.81), row("fold-0", 0.70), row("fold-1", 0.80), row("scanner-augment-f0", 0.75),
            row("scanner-augment-f1", 0.85), row("scanner-augment", 0.9)]
    monkeypatch.setattr(experiments, "_rows", lambda: rows)
    monkeypatch.setattr(experiments, "_short_sha", lambda rev: rev)
    out = experiments.collect_levers(folds=2)
    assert out["command"].endswith("--collect --folds 2")
    assert out["comparisons"][0]["runs"]["scanner-augment-f1"]["changed"]["split.fold"] == "1"
    [summary] = out["cv"]
    lever = summary["levers"]["scanner-augment"]  # the fixed split's run is no fold: left out
    assert lever["folds"] == [0, 1] and lever["n"] == 2
    assert lever["val"]["val_chosen.dice"]["mean"] == pytest.approx(0.80)
    assert summary["levers"]["committed"]["folds"] == [0, 1]
    assert summary["levers"]["committed"]["val"]["val_chosen.dice"]["mean"] == pytest.approx(0.75)
    assert out["spreads"] == []  # no lever ran at a second seed


def test_levers_grid_with_seeds_runs_each_lever_and_the_committed_params_at_each_seed(experiments):
    plain = experiments.experiments("levers", 8, [])
    assert list(plain) == list(experiments.LEVERS)
    seeded = experiments.experiments("levers", 8, [43])
    assert seeded["seed-43"] == ([], {"train.seed": "43"})
    assert seeded["scanner-augment-s43"] == ([], {**experiments.LEVERS["scanner-augment"], "train.seed": "43"})
    assert len(seeded) == 2 * len(experiments.LEVERS) + 1


def test_seeded_lever_runs_are_collected_with_their_seed_and_pooled_into_a_spread(experiments, monkeypatch):
    rows = [row("", 0.81), row("scanner-augment-s43", 0.70), row("seed-43", 0.79)]
    monkeypatch.setattr(experiments, "_rows", lambda: rows)
    monkeypatch.setattr(experiments, "_short_sha", lambda rev: rev)
    same_run = {"derived_from_commit": "0ld", "missing": [], "runs": {  # timed again, on a noisier machine
        "committed": {"val": {"val_chosen.dice": 0.81}, "test_headline": {"deployed": 0.7, "teacher": 0.76, "ms": 9}},
        "scanner-augment": {"val": {"val_chosen.dice": 0.74}, "test_headline": {"deployed": 0.6, "teacher": 0.7}}}}
    other_run = {"derived_from_commit": "0ther", "missing": [], "runs": {
        "committed": {"val": {"val_chosen.dice": 0.5}, "test_headline": {"deployed": 0.5}},
        "scanner-augment": {"val": {"val_chosen.dice": 0.1}, "test_headline": {"deployed": 0.1}}}}
    out = experiments.collect_levers({"comparisons": [same_run, other_run]}, seeds=[43])
    assert out["command"].endswith("--collect --seeds 43")
    newest = out["comparisons"][0]
    assert newest["runs"]["scanner-augment-s43"]["changed"]["train.seed"] == "43"
    assert newest["runs"]["seed-43"]["changed"] == {"train.seed": "43"}
    [spread] = out["spreads"]  # the other committed run has each lever at one seed only
    assert spread["derived_from_commits"] == ["abc1234", "0ld"]
    lever = spread["levers"]["scanner-augment"]
    assert lever["seeds"] == [None, 43] and lever["n"] == 2
    assert lever["val"]["val_chosen.dice"]["mean"] == pytest.approx(0.72)
    assert lever["val"]["val_chosen.dice"]["sd"] == pytest.approx(0.02 * 2 ** 0.5)
    assert lever["test_headline"]["deployed"]["mean"] == pytest.approx((0.7 + 0.6) / 2)
    committed = spread["levers"]["committed"]
    assert committed["seeds"] == [None, 43] and committed["val"]["val_chosen.dice"]["mean"] == pytest.approx(0.80)


def test_a_running_experiment_is_not_collected_with_the_numbers_it_shows_of_its_commit(experiments, monkeypatch):
    rows = [row("", 0.81), row("seed-43", 0.81, State="Running"), row("seed-44", 0.79, State="Success")]
    monkeypatch.setattr(experiments, "_rows", lambda: rows)
    monkeypatch.setattr(experiments, "_short_sha", lambda rev: rev)
    [out] = experiments.collect_levers()["comparisons"]
    assert list(out["runs"]) == ["committed", "seed-44"]
