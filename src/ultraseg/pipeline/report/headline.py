"""metrics/headline.json: the numbers an experiment is judged by, for `dvc exp show` and `dvc metrics diff`."""

from __future__ import annotations

from pathlib import Path

from ultraseg.pipeline.report.inputs import load
from ultraseg.runtime.model_files import DEPLOYED, INT8_VARIANT

HEADLINE_DRIFT = "moderate"
"""The shift-suite severity whose mean Dice drop the headline file carries."""


def headline(scores: dict, rob: dict, bench: dict, train: dict) -> dict:
    """The numbers an experiment is judged by, for `dvc exp show` and `dvc metrics diff` (one screen), with
    short names because `dvc exp show` prints them as column headers: test lesion Dice of the ``teacher`` (and its
    ``teacher_val`` Dice), of the ``deployed`` file, and their ``gap``; the deployed file's ``normal_clean`` share
    and ``missed`` lesions (and the teacher's); the shift suite's mean Dice drop at moderate severity; the
    deployable file's end-to-end p50 ``ms`` per frame on one core and its size in ``mb``."""
    teacher, deployed = scores["variants"]["teacher"], scores["variants"][DEPLOYED]
    drop = {name: m["by_severity"][HEADLINE_DRIFT]["mean_drop"] for name, m in rob["models"].items()}
    end = bench["end_to_end"]["frames"]["scan"]
    return {"teacher_val": train["val_dice"], "teacher": teacher["dice"], "deployed": deployed["dice"],
            "gap": round(teacher["dice"] - deployed["dice"], 4), "normal_clean": deployed["normal_clean"],
            "missed": deployed["failures"]["missed"]["n"], "teacher_missed": teacher["failures"]["missed"]["n"],
            "shift_drop": drop["deployed"], "teacher_shift_drop": drop["teacher"],
            "ms": end["p50_ms"], "mb": bench["variants"][INT8_VARIANT]["file_mb"]}


def headline_file(metrics_dir: Path) -> dict:
    """``{"headline": ...}`` of :func:`headline` from the metrics files in ``metrics_dir``: one key, so that
    `dvc exp show --keep '^headline\\.'` picks exactly these columns."""
    files = [load(metrics_dir / f"{name}.json") for name in ("evaluate", "robustness", "benchmark", "train")]
    return {"headline": headline(*files)}
