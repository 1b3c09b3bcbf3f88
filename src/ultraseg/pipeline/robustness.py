"""The robustness stage's work: the teacher and the deployable files on the test split under every scanner shift
(:mod:`ultraseg.shifts`) at each severity, scored as the evaluate stage scores (lesion-mean Dice at the image's own
resolution), with the share of lesion images where the model predicts nothing at all, and the image-level answer
"is there a lesion at all" (:func:`ultraseg.presence.image_level`: ROC AUC of the runtime's ``score``, sensitivity
and specificity at the operating point), so the suite shows whether that answer holds on another scanner.

Every model runs through the runtime (the teacher's ONNX file at the threshold the evaluate stage chose for it on
val; each profile's deployable file with its own rule), so the comparison is between what each would do on another
scanner. A deployable file answers "is there a lesion" itself (``lesion_present``, at the operating point the deploy
stage stored in it); a file that stores none (the teacher's) is answered ``score >= point`` at a point chosen here on
the unshifted val split (:func:`operating_points`), never on test."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ultraseg import clips, metrics, ood_frames, presence, shifts
from ultraseg import params as params_mod
from ultraseg.data.busi import load_raw
from ultraseg.io import read_csv, split_ids
from ultraseg.runtime.model_files import ACCURATE, DEPLOYED
from ultraseg.runtime.postprocess import PostProcess, Presence
from ultraseg.runtime.segmenter import Segmenter

NONE = "none"


def score(segmenter: Segmenter, images: list[np.ndarray], refs: list[np.ndarray], ids: list[str],
          classes: list[str], point: float | None = None) -> dict[str, Any]:
    """Lesion-mean Dice, normal_clean, the share of lesion images with an empty prediction, the share of images
    the model answers as not breast ultrasound (``flagged``; such a frame gets no mask), and the image-level
    ``auc``, ``sensitivity`` and ``specificity``: of the runtime's own answers, or of ``score >= point``."""
    results = [segmenter.segment(image) for image in images]
    rows = metrics.evaluate_cases([r.mask for r in results], refs, ids, classes)
    lesion = [row for row in rows if row["ref_pixels"] > 0]
    agg = metrics.aggregate(rows, n_boot=1)
    image = presence.image_level([r.score for r in results], [row["ref_pixels"] > 0 for row in rows],
                                 segmenter.operating_point if point is None else point, n_boot=0,
                                 present=[r.lesion_present for r in results] if point is None else None)
    return {"dice": agg["dice"], "normal_clean": agg["normal_clean"], "n_lesion": len(lesion),
            "missed": sum(row["pred_pixels"] == 0 for row in lesion) / max(len(lesion), 1),
            "flagged": sum(not r.in_distribution for r in results) / max(len(results), 1),
            **{key: image[key] for key in IMAGE_LEVEL}}


IMAGE_LEVEL = ("auc", "sensitivity", "specificity")
"""The image-level figures kept per condition (their CIs would need more images than a condition's split has to
tell shifts apart; the evaluate stage gives them on the unshifted test split)."""


def operating_points(models: dict[str, Segmenter], raw_dir: Path, split_csv: Path,
                     sensitivity: float) -> dict[str, float | None]:
    """Per model, the image-level operating point it is scored at: None where the runtime's ``lesion_present`` is
    its answer, else the point that keeps ``sensitivity`` of the unshifted val lesion scans
    (:func:`ultraseg.presence.operating_point`) on the runtime's ``score``. A file with a presence output but no
    stored answer (a network exported before deployment) gets one as the deploy stage chooses it: a temperature
    fitted on val and the point on the calibrated val scores, set on its segmenter."""
    ids = split_ids(split_csv, "val")
    raw = [load_raw(raw_dir, i) for i in ids]
    lesion = np.array([mask.any() for _, mask in raw])
    points: dict[str, float | None] = {}
    for name, segmenter in models.items():
        if segmenter.presence is not None:
            points[name] = None
            continue
        answers = [segmenter.outputs(image) for image, _ in tqdm(raw, desc=f"val point: {name}", unit="img")]
        logits = [logit for _, logit in answers]
        if None not in logits:
            temperature = presence.fit_temperature(logits, lesion)
            point = presence.operating_point(presence.calibrate(logits, temperature), lesion, sensitivity)
            segmenter.presence = Presence(temperature, point, sensitivity=sensitivity)
            points[name] = None
            continue
        points[name] = presence.operating_point([prob.max() for prob, _ in answers], lesion, sensitivity)
    return points


def conditions() -> list[tuple[str, str]]:
    """(shift, severity) of every condition, the unshifted test split first."""
    return [(NONE, NONE)] + [(s.name, level) for s in shifts.SHIFTS for level in shifts.SEVERITIES]


def run(models: dict[str, Segmenter], raw_dir: Path, split_csv: Path, seed: int,
        split: str = "test", points: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Every model under every condition on ``split``; drops are the unshifted Dice minus the shifted one (positive =
    worse). The stage scores test; choosing between models or training levers uses ``split="val"``. ``points``: the
    image-level operating point per model (:func:`operating_points`); by default the runtime's own answers."""
    points = points or {}
    ids = split_ids(split_csv, split)
    classes = {row["id"]: row["class"] for row in read_csv(split_csv)}
    raw = [load_raw(raw_dir, i) for i in ids]
    labels = [classes[i] for i in ids]
    results: dict[str, dict[str, Any]] = {name: {} for name in models}
    for shift, severity in tqdm(conditions(), desc="robustness", unit="condition"):
        if shift == NONE:
            images, refs = [image for image, _ in raw], [mask for _, mask in raw]
        else:
            pairs = [shifts.apply(shifts.by_name(shift), severity, image, mask, seed, k)
                     for k, (image, mask) in enumerate(raw)]
            images, refs = [p[0] for p in pairs], [p[1] for p in pairs]
        for name, segmenter in models.items():
            results[name].setdefault(shift, {})[severity] = score(segmenter, images, refs, ids, labels,
                                                                 points.get(name))
    return {"split": split, "seed": seed, "n_images": len(ids), "severities": list(shifts.SEVERITIES),
            "operating_points": {name: _point(segmenter, points.get(name)) for name, segmenter in models.items()},
            "shifts": {s.name: {"description": s.description, "levels": list(s.levels)} for s in shifts.SHIFTS},
            "models": {name: summarize(result) for name, result in results.items()}}


def _point(segmenter: Segmenter, point: float | None) -> dict[str, Any]:
    if point is not None:
        return {"threshold": round(point, 4), "from": "unshifted val"}
    if segmenter.presence is not None and segmenter.meta.get("presence") is None:
        return {"threshold": round(segmenter.operating_point, 4), "temperature": round(segmenter.presence.temperature, 4),
                "from": "unshifted val (presence calibrated there; runtime's lesion_present)"}
    return {"threshold": round(segmenter.operating_point, 4), "from": "the file (runtime's lesion_present)"}


def val_summary(deployed: Segmenter, raw_dir: Path, split_csv: Path, seed: int) -> dict[str, Any]:
    """The deployed file's drops per severity on shifted val, with its unshifted val Dice: a training lever may be
    chosen by these, never by test's."""
    result = run({"deployed": deployed}, raw_dir, split_csv, seed, split="val")["models"]["deployed"]
    return {"split": "val", "deployed": {"clean": result["clean"], "by_severity": result["by_severity"]}}


def stream_summary(models: dict[str, Segmenter], raw_dir: Path, split_csv: Path, seed: int,
                   split: str = "test") -> dict[str, Any]:
    """Each model on a simulated live scan of ``split`` (:mod:`ultraseg.clips`): how steady its lesion decision is
    frame by frame and with its stream smoothing, and how many frames a true change takes to show."""
    ids = split_ids(split_csv, split)
    lesion = {row["id"]: row["class"] != "normal" for row in read_csv(split_csv)}
    clip = clips.build([load_raw(raw_dir, i)[0] for i in ids], [lesion[i] for i in ids], seed)
    out: dict[str, Any] = {"split": split, "frames": len(clip.frames), "runs": clips.RUNS,
                           "run_frames": clips.RUN_FRAMES}
    for name, segmenter in models.items():
        results = [segmenter.segment(frame) for frame in tqdm(clip.frames, desc=f"stream: {name}", unit="frame")]
        smoother = segmenter.smoother()
        steady = [segmenter.smoothed(result, smoother).lesion_present for result in results]
        out[name] = {"stream": params_mod.to_dict(segmenter.stream_rule),
                     "per_frame": clips.stream_scores([r.lesion_present for r in results], clip.truth),
                     "smoothed": clips.stream_scores(steady, clip.truth)}
    return out


def ood_summary(segmenter: Segmenter, raw_dir: Path, split_csv: Path, seed: int, split: str = "test") -> dict[str, Any]:
    """The share of the built not-breast-ultrasound set (:mod:`ultraseg.ood_frames`) that ``segmenter`` flags out of
    distribution, overall and per kind, and the share of ``split``'s scans it flags, each with the reasons given."""
    built = ood_frames.build(seed)
    results = [segmenter.segment(f.image) for f in tqdm(built, desc="ood: built set", unit="frame")]
    ids = split_ids(split_csv, split)
    scans = [segmenter.segment(load_raw(raw_dir, i)[0]) for i in tqdm(ids, desc=f"ood: {split}", unit="img")]
    flagged = [not r.in_distribution for r in scans]
    return {"checked": segmenter.ood is not None,
            "threshold": round(segmenter.ood.threshold, 4) if segmenter.ood else None,
            "built": ood_frames.flagged([not r.in_distribution for r in results], [f.kind for f in built])
            | {"reasons": reasons(results)},
            "scans": {"split": split, "images": len(ids), "flagged": round(float(np.mean(flagged)), 4),
                      "reasons": reasons(scans)}}


def reasons(results: list) -> dict[str, int]:
    """How many results give each kind of reason (its text up to any figures), "in distribution" for none."""
    return dict(Counter(r.ood_reason.split(" (")[0] or "in distribution" for r in results))


def summarize(result: dict[str, dict[str, dict]]) -> dict[str, Any]:
    """Per condition scores with their Dice drop, and the mean and worst drop at each severity."""
    base = result[NONE][NONE]["dice"]
    table = {shift: {level: {**_rounded(s), "drop": round(base - s["dice"], 4)} for level, s in by_level.items()}
             for shift, by_level in result.items() if shift != NONE}
    summary = {}
    for level in shifts.SEVERITIES:
        drops = {shift: table[shift][level]["drop"] for shift in table}
        worst = max(drops, key=drops.get)
        summary[level] = {"mean_drop": round(float(np.mean(list(drops.values()))), 4), "worst_shift": worst,
                          "worst_drop": drops[worst],
                          "most_missed": round(max(table[shift][level]["missed"] for shift in table), 4),
                          "most_flagged": round(max(table[shift][level]["flagged"] for shift in table), 4),
                          **{f"lowest_{key}": _lowest([table[shift][level][key] for shift in table])
                             for key in IMAGE_LEVEL}}
    return {"clean": _rounded(result[NONE][NONE]), "by_severity": summary, "shifts": table}


def _lowest(values: list[float]) -> float:
    """The lowest of ``values`` that is defined (NaN when none is: a split without normal or lesion images)."""
    values = [v for v in values if not np.isnan(v)]
    return round(float(min(values)), 4) if values else float("nan")


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def load_models(teacher_onnx: Path, teacher_threshold: float, deployable: Path,
                accurate: Path | None = None) -> dict[str, Segmenter]:
    """The teacher at its val threshold, smoothed in a stream as the deployable file is, the deployable file (the
    edge profile's) and, when given, the ``accurate`` profile's."""
    deployed = Segmenter(deployable)
    # every core for the teacher's network, whose calls are most of the stage's time; the small student gains
    # little from threads
    teacher = Segmenter(teacher_onnx, threads=0, postprocess=PostProcess(threshold=teacher_threshold),
                        stream=deployed.stream_rule)
    return {"teacher": teacher, DEPLOYED: deployed} | ({} if accurate is None else
                                                        {ACCURATE: Segmenter(accurate, threads=0)})


def figure(summary: dict[str, Any], path: Path) -> None:
    """Dice drop per shift and severity, one panel per model, on one scale."""
    from ultraseg import figures

    plt = figures.pyplot()
    names = list(summary["models"])
    shift_names = list(summary["shifts"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), sharey=True, squeeze=False)
    width = 0.8 / len(shifts.SEVERITIES)
    for ax, name in zip(axes[0], names):
        table = summary["models"][name]["shifts"]
        for k, level in enumerate(shifts.SEVERITIES):
            xs = np.arange(len(shift_names)) + (k - 1) * width
            ax.bar(xs, [table[s][level]["drop"] for s in shift_names], width, label=level)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(len(shift_names)), shift_names, rotation=35, ha="right")
        clean = summary["models"][name]["clean"]["dice"]
        ax.set_title(f"{name} (unshifted {summary.get('split', 'test')} Dice {clean:.3f})")
    axes[0][0].set_ylabel("lesion Dice drop (unshifted - shifted)")
    axes[0][0].legend(title="severity")
    fig.tight_layout()
    figures.save(fig, path)
