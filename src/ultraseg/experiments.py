"""The schema of the experiment results that scripts/experiments.py writes and the report reads.

experiments/levers.json holds one *comparison* per commit the levers were derived from, newest first::

    {"command": "...", "comparisons": [{"derived_from_commit": "abc1234", "missing": [lever, ...],
                                         "runs": {RUN: {"changed": {"dotted.key": "value", ...},
                                                        "val": {VAL KEY: number | null, ...},
                                                        "test_headline": {HEADLINE KEY: number} | null,
                                                        "curve": {"path": ..., "points": [[step, value], ...]}}}}],
     "spreads": [{"derived_from_commits": [...], "levers": {LEVER: {"seeds": [...], "n": 2,
                                                                     "val": {KEY: {"mean", "sd"}},
                                                                     "test_headline": {KEY: {"mean", "sd"}}}}}],
     "cv": [{"derived_from_commits": [...], "levers": {LEVER: {"folds": [...], "n": 5, "val": ..., ...}}}]}

A RUN is named ``committed`` (the commit's own params), ``LEVER``, ``seed-SEED`` (the committed params at another
training seed), ``LEVER-sSEED``, ``fold-K`` (the committed params with cross-validation fold K as val,
``split.fold``) or ``LEVER-fK`` (:func:`decode_run`). ``spreads`` pool the fixed split's runs over seeds, ``cv`` the
committed seed's runs over folds: the cross-validation mean ± sd, on five times the val images of one split. ``val`` holds the numbers a lever is chosen by, all on the
val split (:data:`VAL_COLUMNS`); ``test_headline`` is the run's metrics/headline.json, kept for the record only.
This module imports only the standard library, so the report reads the file without the script's DVC machinery.
"""

from __future__ import annotations

import json
import re
import statistics
from typing import NamedTuple

COMMITTED = "committed"
"""The run of a comparison, and the lever of a spread, that holds the commit's own params."""

TEACHER_VAL = "teacher_val"
"""The teacher's val Dice: a key of the run's test headline, since no val metrics file of the levers holds it."""

VAL_COLUMNS: dict[str, tuple[str, str]] = {
    "student val": ("metrics/distill.json", "student.val_dice"),
    "pruned val": ("metrics/prune.json", "val_dice_after"),
    "int8 val": ("metrics/quantize.json", "val_dice_int8"),
    "deployed val": ("metrics/deploy.json", "val_chosen.dice"),
    "normal clean (val)": ("metrics/deploy.json", "val_chosen.normal_clean"),
    "presence AUC (val)": ("metrics/deploy.json", "presence.val_auc"),
    "shift drop (val)": ("metrics/robustness.json", "val.deployed.by_severity.moderate.mean_drop"),
    "most missed (val)": ("metrics/robustness.json", "val.deployed.by_severity.moderate.most_missed"),
}
"""Report column -> (metrics file, key as `dvc exp show` flattens it) of each val number a lever is chosen by."""

VAL_METRICS: dict[str, tuple[str, ...]] = {
    file: tuple(key for other, key in VAL_COLUMNS.values() if other == file) for file, _ in VAL_COLUMNS.values()}
"""Metrics file -> the keys of :data:`VAL_COLUMNS` it holds: what the script collects into a run's ``val``."""

LEVER_COLUMNS: dict[str, str] = {"teacher val": TEACHER_VAL, **{col: key for col, (_, key) in VAL_COLUMNS.items()}}
"""Report column -> key of a run (:func:`lever_value`): the teacher's val Dice, then every val number."""

NO_DISTILLATION = "no-distillation"
"""The lever that trains the student on the masks alone: its run keeps the student's curve (``curve``), which the
report draws against the distilled student when the committed run did not train that baseline itself."""

TIMINGS = ("ms",)
"""metrics/headline.json numbers that time the run rather than score its files."""


def lever_value(run: dict, key: str):
    """The number ``key`` of :data:`LEVER_COLUMNS` in one run of a comparison; None where the run lacks it."""
    return (run.get("test_headline") or {}).get(key) if key == TEACHER_VAL else (run.get("val") or {}).get(key)


def spread_value(spread: dict, key: str) -> dict | None:
    """The mean and sd of ``key`` of :data:`LEVER_COLUMNS` in one lever of a spread; None where it lacks it."""
    return spread["test_headline" if key == TEACHER_VAL else "val"].get(key)


class Run(NamedTuple):
    lever: str
    seed: int | None
    """The training seed; None: the committed one."""
    fold: int | None
    """The cross-validation fold that is val; None: the fixed train/val split."""


def decode_run(name: str) -> Run:
    """The lever, training seed and fold a run's name stands for, :data:`COMMITTED` being the committed params.
    The name is not checked against any list of levers."""
    if match := re.fullmatch(r"(seed|fold)-(\d+)", name):
        return Run(COMMITTED, int(match[2]), None) if match[1] == "seed" else Run(COMMITTED, None, int(match[2]))
    if match := re.fullmatch(r"(.+)-([sf])(\d+)", name):
        return Run(match[1], int(match[3]), None) if match[2] == "s" else Run(match[1], None, int(match[3]))
    return Run(name, None, None)


def mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values)}


def spreads(comparisons: list[dict]) -> list[dict]:
    """Mean and sd over training seeds of every lever (and of the committed params) run at two or more seeds on the
    fixed split, one entry per committed run (:func:`_pool`)."""
    return _pool(comparisons, "seed")


def cv(comparisons: list[dict]) -> list[dict]:
    """Mean and sd over cross-validation folds of every lever (and of the committed params) run at two or more
    folds at the committed seed, one entry per committed run (:func:`_pool`)."""
    return _pool(comparisons, "fold")


def _pool(comparisons: list[dict], over: str) -> list[dict]:
    """Runs pooled by lever over ``over`` (``seed``: fixed-split runs; ``fold``: the committed seed's fold runs).
    Comparisons whose committed rows carry the same test headline, timings aside (another benchmark run of the same
    files on a shared machine), compare with the same run, derived from several commits that changed nothing it
    depends on, so their runs are pooled; the newest run of a lever at a seed or fold wins."""
    pooled: dict[str, tuple[list[str], dict[str, dict]]] = {}
    for comparison in comparisons:
        committed = comparison["runs"].get(COMMITTED, {}).get("test_headline") or {}
        accuracy = {k: v for k, v in committed.items() if k not in TIMINGS}
        commits, by_lever = pooled.setdefault(json.dumps(accuracy, sort_keys=True), ([], {}))
        commits.append(comparison["derived_from_commit"])
        for name, run in comparison["runs"].items():
            decoded = decode_run(name)
            replicate = decoded.seed if over == "seed" else decoded.fold
            other = decoded.fold if over == "seed" else decoded.seed
            if run.get("test_headline") and other is None and (over == "seed" or replicate is not None):
                by_lever.setdefault(decoded.lever, {}).setdefault(replicate, run)
    return [{"derived_from_commits": commits,
             "levers": {lever: _spread(runs, f"{over}s") for lever, runs in by_lever.items() if len(runs) >= 2}}
            for commits, by_lever in pooled.values() if any(len(runs) >= 2 for runs in by_lever.values())]


def _spread(runs: dict[int | None, dict], label: str) -> dict:
    """The seeds or folds (``label``; None: the committed seed) and the mean and sd of each val and test-headline
    number they all have."""
    def summary(part: str) -> dict:
        keys = [k for k, v in next(iter(runs.values()))[part].items() if isinstance(v, (int, float))]
        values = {k: [run[part].get(k) for run in runs.values()] for k in keys}
        return {k: mean_sd(v) for k, v in values.items() if all(isinstance(x, (int, float)) for x in v)}
    runs = dict(sorted(runs.items(), key=lambda item: -1 if item[0] is None else item[0]))
    return {label: list(runs), "n": len(runs), "val": summary("val"), "test_headline": summary("test_headline")}
