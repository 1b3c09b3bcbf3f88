"""ultraseg evaluate-folder: score the deployable model on your own labelled scans before you trust it.

DATA is a folder or a CSV in one of the layouts of ultraseg.data.labelled: images/ + masks/ with the same stems,
a CSV of image, mask [, class, group, pixel_spacing_mm], or BUSI's <stem>_mask*.png files. Below --out it writes:

    cases.csv      one row per image: Dice, IoU, precision, recall, HD95 in px (and in mm where the CSV gives the
                   pixel spacing), pixel counts, class and group, and the image-level score and answer ("is there
                   a lesion at all") the model gives
    summary.json   the aggregates, scored as the pipeline's evaluate stage scores BUSI's test split: lesion-mean Dice
                   with its bootstrap 95% CI, IoU, precision, recall, HD95 over hit lesions with the number of misses,
                   missed lesions, false alarms, image-level sensitivity and specificity (normal images left clean)
                   with Wilson 95% CIs, per class and per group; and, when the folder holds normal images (empty
                   masks) as well as lesions, image_level: how well the model's image-level score and answer
                   tell the two apart (ROC AUC with a bootstrap 95% CI, sensitivity and specificity at the model's
                   own operating point with Wilson 95% CIs, calibration error)
    cases.png      the best, median and worst lesion cases and two normal ones

Every file is read before anything is scored. Each bad one (an image without a mask, a mask that cannot be matched
to its image, a non-binary mask, an unreadable file, a file whose header declares more than --max-pixels pixels) is
reported on its own line; then the command stops with status 1 and writes nothing, unless --skip-bad scores the rest
and lists what it skipped in summary.json.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ultraseg import figures, metrics, presence
from ultraseg.commands import model_choice
from ultraseg.data import labelled
from ultraseg.errors import DataError
from ultraseg.io import write_csv, write_json
from ultraseg.runtime.segmenter import Segmenter
from ultraseg.runtime.sources import MAX_PIXELS, check_pixels, to_grey

CASE_COLUMNS = ("id", "file", "class", "group", "dice", "iou", "precision", "recall", "hd95", "hd95_mm",
                "pixel_spacing_mm", "tp", "fp", "fn", "pred_pixels", "ref_pixels", "score", "lesion_present")
NO_IMAGE_LEVEL = "image-level figures need normal images (empty masks) as well as lesion images"
EXAMPLES = """examples:
  ultraseg evaluate-folder siteA/ --out results/siteA
  ultraseg evaluate-folder siteA/labels.csv --profile accurate --out results/siteA-accurate
  ultraseg evaluate-folder siteB/ --layout folders --skip-bad --out results/siteB"""


class BadFiles(DataError):
    """Some files of the folder could not be used, and the caller did not ask to skip them."""


@dataclass
class Loaded:
    """The readable cases of a folder, and one line for each file that could not be used."""

    cases: list[labelled.Case] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    refs: list[np.ndarray] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def load(data: Path, layout: labelled.Layout = "auto", max_pixels: int = MAX_PIXELS) -> Loaded:
    """Scan ``data`` and read every case, collecting (not raising) the errors of single files (an image or mask
    whose header declares more than ``max_pixels`` pixels is one, found before it is decoded); a folder that
    cannot be scanned at all raises :class:`DataError`."""
    loaded = Loaded()
    for case in tqdm(labelled.scan(data, layout), desc="read", unit="img", file=sys.stderr):
        try:
            for path in (case.image, *case.masks):
                check_pixels(path, max_pixels)
            image, ref = labelled.load(case)
        except DataError as err:
            loaded.errors.append(" ".join(str(err).split()))
            tqdm.write(f"error: {loaded.errors[-1]}", file=sys.stderr)
            continue
        loaded.cases.append(case)
        loaded.images.append(image)
        loaded.refs.append(ref)
    return loaded


def score(segmenter: Segmenter, loaded: Loaded, n_boot: int = 1000, seed: int = 0) -> tuple[dict, list[dict], list]:
    """Aggregates, per-case rows and predicted masks of ``segmenter`` on the loaded cases, with the conventions
    of :mod:`ultraseg.metrics`; ``image_level`` (:func:`ultraseg.presence.image_level` of the runtime's ``score``
    and ``lesion_present``) is None unless there are both lesion and normal images."""
    results = [segmenter.segment(image) for image in tqdm(loaded.images, desc="score", unit="img", file=sys.stderr)]
    preds = [r.mask for r in results]
    ids = [case.id for case in loaded.cases]
    classes = [labelled.class_of(case, ref) for case, ref in zip(loaded.cases, loaded.refs)]
    rows = metrics.evaluate_cases(preds, loaded.refs, ids, classes)
    for row, case, result in zip(rows, loaded.cases, results):
        row.update(file=str(case.image), group=case.group, pixel_spacing_mm=case.spacing_mm,
                   hd95_mm=row["hd95"] * case.spacing_mm if case.spacing_mm else float("nan"),
                   score=result.score, lesion_present=result.lesion_present)
    summary = {"n_images": len(rows), **metrics.aggregate(rows, n_boot, seed),
               "hd95_mm": _lesion_mean(rows, "hd95_mm"), "by_group": by_group(rows),
               "image_level": image_level(segmenter, results, loaded.refs, n_boot, seed)}
    return summary, rows, preds


def image_level(segmenter: Segmenter, results: Sequence, refs: Sequence[np.ndarray], n_boot: int,
                seed: int) -> dict | None:
    """:func:`ultraseg.presence.image_level` of the runtime's answers at its own operating point; None without both
    lesion and normal images, where sensitivity, specificity and AUC cannot all be had."""
    lesion = np.array([ref.any() for ref in refs], bool)
    if lesion.all() or not lesion.any():
        return None
    return presence.image_level([r.score for r in results], lesion, segmenter.operating_point, n_boot, seed,
                                present=[r.lesion_present for r in results])


def _lesion_mean(rows: Sequence[dict], key: str) -> float:
    values = np.array([row[key] for row in rows if row["ref_pixels"] > 0], dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def by_group(rows: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Lesion-mean Dice and image counts per ``group`` (a site, scanner or patient column), where groups are given."""
    groups = sorted({row["group"] for row in rows if row["group"]})
    return {g: {"n": sum(row["group"] == g for row in rows),
                "dice": _lesion_mean([row for row in rows if row["group"] == g], "dice")} for g in groups}


def evaluate(model: Path, data: Path, out: Path, layout: labelled.Layout = "auto", skip_bad: bool = False,
             n_boot: int = 1000, seed: int = 0, max_pixels: int = MAX_PIXELS) -> dict:
    """Score ``model`` on ``data`` and write cases.csv, summary.json and cases.png below ``out``; returns the
    summary. Raises :class:`BadFiles` when a file was bad and ``skip_bad`` is off, before writing anything."""
    segmenter = Segmenter(model)
    loaded = load(data, layout, max_pixels)
    if loaded.errors and not skip_bad:
        raise BadFiles(f"{data}: {len(loaded.errors)} bad file(s), reported above; nothing was scored "
                        "(fix them, or pass --skip-bad to score the rest)")
    if not loaded.cases:
        raise DataError(f"{data}: no readable labelled image")
    summary, rows, preds = score(segmenter, loaded, n_boot, seed)
    summary = {"data": str(data), "model": str(model), "postprocess": segmenter.postprocess.to_dict(),
               "skipped": loaded.errors, **summary}
    write_csv(out / "cases.csv", rows, CASE_COLUMNS)
    if summary["n_lesion"]:
        figures.cases_figure([to_grey(image) for image in loaded.images], loaded.refs, [c.id for c in loaded.cases],
                             {"deployed": preds}, {"deployed": rows}, f"{data.name}: {model.name}",
                             out / "cases.png")
    write_json(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------------- command


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    summary, _, details = __doc__.partition("\n\n")
    ap = subparsers.add_parser("evaluate-folder", help=summary.split(": ", 1)[1], description=__doc__,
                               epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, metavar="DATA", help="a labelled folder, or a CSV of image and mask paths")
    model_choice.add_arguments(ap)
    ap.add_argument("--out", type=Path, required=True, help="folder for cases.csv, summary.json and cases.png")
    ap.add_argument("--layout", choices=labelled.LAYOUTS, default="auto",
                    help="how DATA is organised (default: detected)")
    ap.add_argument("--skip-bad", action="store_true", help="score the readable images when some are bad")
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples for the Dice CI (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: %(default)s)")
    ap.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                    help="largest image accepted, in pixels (default: %(default)s); a file whose header declares "
                         "more is reported as a bad file before it is decoded")
    ap.set_defaults(run=run)
    return ap


def run(args: argparse.Namespace) -> int:
    """0 when every file was scored, 1 when some were bad (skipped or not), 2 when nothing could be scored."""
    try:
        summary = evaluate(model_choice.model_path(args), args.data, args.out, args.layout, args.skip_bad,
                           args.bootstrap, args.seed, args.max_pixels)
    except DataError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1 if isinstance(err, BadFiles) else 2
    f = summary["failures"]
    print(f"evaluate-folder: {summary['n_lesion']} lesion images, Dice {summary['dice']:.4f} "
          f"[{summary['dice_ci95'][0]:.4f}, {summary['dice_ci95'][1]:.4f}], missed {f['missed']['n']}; "
          f"{summary['n_normal']} normal images, {f['normal_clean']['n']} clean -> {args.out}")
    print(f"evaluate-folder: {image_line(summary['image_level'])}")
    return 1 if summary["skipped"] else 0


def image_line(image: dict | None) -> str:
    """One line of the image-level figures, or why there are none."""
    if image is None:
        return NO_IMAGE_LEVEL
    return (f"is there a lesion: ROC AUC {image['auc']:.4f} [{image['auc_ci95'][0]:.4f}, {image['auc_ci95'][1]:.4f}]"
            f", at the model's operating point {image['threshold']:.4f} sensitivity {image['sensitivity']:.4f} "
            f"[{image['sensitivity_ci95'][0]:.4f}, {image['sensitivity_ci95'][1]:.4f}], specificity "
            f"{image['specificity']:.4f} [{image['specificity_ci95'][0]:.4f}, {image['specificity_ci95'][1]:.4f}]"
            f", calibration error {image['ece']:.4f}")
