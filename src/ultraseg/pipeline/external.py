"""The external stage's work: the deployable file scored on each labelled folder that ``evaluate.external`` names,
exactly as ``ultraseg evaluate-folder`` scores one (:mod:`ultraseg.commands.evaluate_folder`).

A folder with a bad file stops the stage before anything is written: an external score over the readable part of a
folder would look like a score of the folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ultraseg.commands import evaluate_folder
from ultraseg.io import write_csv

INDEX_COLUMNS = ("name", "data", "n_images", "n_lesion", "dice", "dice_low", "dice_high", "missed", "sensitivity",
                 "n_normal", "normal_clean", "image_auc", "image_auc_low", "image_auc_high", "image_sensitivity",
                 "image_specificity")
"""``image_*``: the image-level answer (:func:`ultraseg.presence.image_level`), empty for a folder without both
lesion and normal images."""


def names(folders: Sequence[str]) -> list[str]:
    """A short, unique name per folder: its base name (a CSV's without the suffix), numbered where two repeat."""
    base = [Path(f).stem if Path(f).suffix.lower() == ".csv" else Path(f).name for f in folders]
    return [b if base.count(b) == 1 else f"{b}-{k + 1}" for k, b in enumerate(base)]


def run(folders: Sequence[str], model: Path, out_dir: Path, n_boot: int, seed: int) -> dict:
    """Score ``model`` on every folder into ``out_dir/<name>/`` and ``out_dir/datasets.csv``; returns the metrics."""
    datasets = {}
    for name, folder in zip(names(folders), folders):
        datasets[name] = evaluate_folder.evaluate(model, Path(folder), out_dir / name, n_boot=n_boot, seed=seed)
    write_csv(out_dir / "datasets.csv", [index_row(name, s) for name, s in datasets.items()], INDEX_COLUMNS)
    return {"model": str(model), "datasets": datasets}


def index_row(name: str, summary: dict) -> dict:
    f = summary["failures"]
    return {"name": name, "data": summary["data"], "n_images": summary["n_images"], "n_lesion": summary["n_lesion"],
            "dice": round(summary["dice"], 4), "dice_low": round(summary["dice_ci95"][0], 4),
            "dice_high": round(summary["dice_ci95"][1], 4), "missed": f["missed"]["n"],
            "sensitivity": round(f["sensitivity"]["rate"], 4), "n_normal": summary["n_normal"],
            "normal_clean": round(f["normal_clean"]["rate"], 4), **image_columns(summary["image_level"])}


def image_columns(image: dict | None) -> dict:
    if image is None:
        return {}
    return {"image_auc": round(image["auc"], 4), "image_auc_low": round(image["auc_ci95"][0], 4),
            "image_auc_high": round(image["auc_ci95"][1], 4),
            "image_sensitivity": round(image["sensitivity"], 4), "image_specificity": round(image["specificity"], 4)}
