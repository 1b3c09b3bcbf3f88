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
    ``teacher_val`` Dice), of the ``deployed`` file, and their ``gap``; the deployed file's ``missed`` lesions (and
    the teacher's); the deployed file's image-level ``auc`` and its specificity ``spec`` at its operating point (the
    rest of the image-level figures are in :func:`image_level`), or, for a file written before they were scored,
    its ``normal_clean`` share of normal scans with an empty mask (the same share as ``spec`` once the mask is empty
    exactly when the answer is "no lesion"; one of the two keeps the recipe within 15 columns); the shift suite's
    mean Dice drop at moderate severity; the deployable file's end-to-end p50 ``ms`` per frame on one core and its
    size in ``mb``."""
    teacher, deployed = scores["variants"]["teacher"], scores["variants"][DEPLOYED]
    drop = {name: m["by_severity"][HEADLINE_DRIFT]["mean_drop"] for name, m in rob["models"].items()}
    end = bench["end_to_end"]["frames"]["scan"]
    return {"teacher_val": train["val_dice"], "teacher": teacher["dice"], "deployed": deployed["dice"],
            "gap": round(teacher["dice"] - deployed["dice"], 4),
            "missed": deployed["failures"]["missed"]["n"], "teacher_missed": teacher["failures"]["missed"]["n"],
            **_deployed_image(deployed),
            "shift_drop": drop["deployed"], "teacher_shift_drop": drop["teacher"],
            "ms": end["p50_ms"], "mb": bench["variants"][INT8_VARIANT]["file_mb"]}


def _deployed_image(deployed: dict) -> dict:
    image = deployed.get("image_level")
    if not image:
        return {"normal_clean": deployed["normal_clean"]}
    return {"auc": image["auc"], "spec": image["specificity"]}


def image_level(scores: dict) -> dict:
    """The deployed file's and the teacher's image-level answer on test: ``auc`` with its bootstrap 95% CI, and
    ``sens`` and ``spec`` with Wilson 95% CIs at the operating point ``point`` (chosen on val), as flat numbers that
    `dvc metrics diff` compares; a model scored before the image-level answer was is left out."""
    out = {}
    for name in ("teacher", DEPLOYED):
        image = scores["variants"].get(name, {}).get("image_level")
        if image:
            out[name] = {"point": image["threshold"], **_with_ci(image, "auc", "auc"),
                         **_with_ci(image, "sensitivity", "sens"), **_with_ci(image, "specificity", "spec")}
    return out


def _with_ci(image: dict, key: str, short: str) -> dict:
    low, high = image[f"{key}_ci95"]
    return {short: image[key], f"{short}_low": low, f"{short}_high": high}


def headline_file(metrics_dir: Path) -> dict:
    """``{"headline": ...}`` of :func:`headline` from the metrics files in ``metrics_dir``, so that
    `dvc exp show --keep '^headline\\.'` picks exactly these columns, and ``{"image_level": ...}`` of
    :func:`image_level` beside it."""
    files = [load(metrics_dir / f"{name}.json") for name in ("evaluate", "robustness", "benchmark", "train")]
    return {"headline": headline(*files), "image_level": image_level(files[0])}
