"""The evaluate stage's work: every variant scored on the held-out test split, as it would be deployed.

For each variant (:mod:`ultraseg.variants`): probabilities at network size on val and test, resized back to each
image's original resolution; the decision threshold chosen on val (or fixed in params), never on test; per-case
scores and aggregates with the conventions of :mod:`ultraseg.metrics`. ONNX variants run through ONNX Runtime,
so the int8 model is scored by the runtime and the file an edge device would load.

Each variant also answers "is there a lesion at all" (:func:`ultraseg.presence.image_level`): its presence
probability, calibrated by a temperature fitted on val, where its network has a presence head, else the highest
pixel probability (the runtime's fallback); the operating point is chosen on val to keep ``deploy.presence``'s
sensitivity. The deployable file is scored by the runtime's own ``score`` and ``lesion_present``, with the
temperature and operating point the deploy stage stored in it. Nothing is chosen on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ultraseg import figures, metrics, presence
from ultraseg.data.busi import load_raw, read_manifest
from ultraseg.data.dataset import load_split
from ultraseg.io import read_csv
from ultraseg.params import EvaluateParams, Params
from ultraseg.runtime.model_files import ACCURATE, DEPLOYED, INT8_VARIANT
from ultraseg.runtime.preprocess import resize_probabilities
from ultraseg.runtime.segmenter import Segmenter
from ultraseg.variants import VARIANTS, Variant, predictor, probabilities

STEPS = (("student", "teacher", "distillation to the small student"),
         ("pruned", "student", "channel pruning and fine-tuning"),
         ("pruned_onnx", "pruned", "ONNX export"),
         (INT8_VARIANT, "pruned_onnx", "int8 quantization"),
         (DEPLOYED, INT8_VARIANT, "threshold and post-processing chosen on val"),
         (DEPLOYED, "teacher", "the whole chain"),
         (ACCURATE, "teacher", "the teacher deployed with its own rule (the accurate profile)"))
"""Each optimisation step as (after, before, what): their paired per-image Dice difference says what it cost."""
SAMPLE_VARIANTS = ("teacher", INT8_VARIANT)
"""Shown side by side, after the deployable file, in the sample figure."""
CASE_COLUMNS = ("variant", "id", "class", "threshold", "dice", "iou", "precision", "recall", "hd95", "tp", "fp", "fn",
                "pred_pixels", "ref_pixels", "score", "lesion_present")
"""``score`` is the image-level score, ``lesion_present`` the image-level answer at the variant's operating point."""
ROC_DIR = "roc"
"""The folder of ROC curve files, one CSV per variant, inside the stage's plots folder."""


class Split:
    """One split's network inputs, and its references and images at original resolution."""

    def __init__(self, data_dir: Path, raw_dir: Path, split_csv: Path, name: str, normalize: str):
        self.inputs, _, self.ids = load_split(data_dir, split_csv, name, normalize)
        classes = {row["id"]: row["class"] for row in read_csv(split_csv)}
        self.classes = [classes[i] for i in self.ids]
        sources = {row["id"]: row.get("source", "") for row in read_manifest(raw_dir / "manifest.csv")}
        self.sources = [sources[i] for i in self.ids]
        raw = [load_raw(raw_dir, i) for i in self.ids]
        self.images = [image for image, _ in raw]
        self.refs = [mask for _, mask in raw]
        self.lesion = np.array([ref.any() for ref in self.refs], bool)

    def probabilities(self, predict) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Each image's lesion probabilities at its original resolution, and the presence logits (None when the
        network has no presence head)."""
        probs, logits = probabilities(predict, self.inputs)
        return [resize_probabilities(p, ref.shape) for p, ref in zip(probs, self.refs)], logits


def thresholds(params: EvaluateParams) -> np.ndarray:
    step = params.threshold_step
    return np.round(np.arange(step, 1 - step / 2, step), 6)


def score_variant(variant: Variant, models_dir: Path, val: Split, test: Split, params: EvaluateParams,
                  sensitivity: float) -> tuple[dict, list[dict], list[dict], list[np.ndarray]]:
    """Aggregates, per-case rows and val threshold curve of one variant, and its test predictions; the image-level
    answer's operating point keeps ``sensitivity`` on val."""
    predict = predictor(variant, models_dir)
    val_probs, val_logits = val.probabilities(predict)
    curve = metrics.threshold_curve(val_probs, val.refs, thresholds(params))
    threshold = metrics.choose_threshold(curve) if params.threshold == "val" else float(params.threshold)
    test_probs, test_logits = test.probabilities(predict)
    preds = [p > threshold for p in test_probs]
    rows = metrics.evaluate_cases(preds, test.refs, test.ids, test.classes)
    image, scores = image_answer((val_probs, val_logits, val.lesion), (test_probs, test_logits, test.lesion),
                                 params, sensitivity)
    point = image["threshold"]
    summary = {"threshold": threshold, "threshold_from": "val" if params.threshold == "val" else "params",
               **metrics.aggregate(rows, params.bootstrap, params.seed), **by_source(rows, test, params),
               "image_level": image}
    rows = [{"variant": variant.name, "threshold": threshold, **row, "score": float(s),
             "lesion_present": bool(s >= point)} for row, s in zip(rows, scores)]
    return summary, rows, curve, preds


def image_answer(val: tuple, test: tuple, params: EvaluateParams, sensitivity: float) -> tuple[dict, np.ndarray]:
    """The image-level answer of a variant from ``(probabilities, presence logits or None, lesion flags)`` of val
    and of test: the temperature is fitted and the operating point (keeping ``sensitivity``) chosen on val only;
    returns the test summary (:func:`ultraseg.presence.image_level`, with the val AUC) and the test scores."""
    (val_probs, val_logits, val_lesion), (test_probs, test_logits, test_lesion) = val, test
    temperature = None if val_logits is None else presence.fit_temperature(val_logits, val_lesion)
    val_scores = image_scores(val_probs, val_logits, temperature)
    point = presence.operating_point(val_scores, val_lesion, sensitivity)
    scores = image_scores(test_probs, test_logits, temperature)
    return {"score": "max_probability" if temperature is None else "presence", "temperature": temperature,
            "point_from": "val", "val_auc": presence.roc_auc(val_scores, val_lesion),
            **presence.image_level(scores, test_lesion, point, params.bootstrap, params.seed)}, scores


def image_scores(probs: Sequence[np.ndarray], logits: np.ndarray | None, temperature: float | None) -> np.ndarray:
    """Each image's score: its presence probability at ``temperature``, or, without presence logits, its highest
    pixel probability, as the runtime scores a file without a presence output."""
    if logits is None:
        return np.array([float(p.max()) if p.size else 0.0 for p in probs])
    return presence.calibrate(logits, temperature)


def score_deployed(path: Path, val: Split, test: Split, params: EvaluateParams,
                   name: str = DEPLOYED) -> tuple[dict, list[dict], list[dict], list[np.ndarray]]:
    """As :func:`score_variant`, for a deployable file (scored as ``name``) through the runtime a user runs: its own
    threshold and post-processing (chosen on val by the deploy stage), the raw images in, the masks out."""
    segmenter = Segmenter(path)
    rule = segmenter.postprocess
    curve = metrics.threshold_curve([segmenter.probability(image)[0] for image in val.images], val.refs,
                                    thresholds(params))
    val_scores = [segmenter.segment(image).score for image in val.images]
    results = [segmenter.segment(image) for image in test.images]
    preds = [r.mask for r in results]
    rows = metrics.evaluate_cases(preds, test.refs, test.ids, test.classes)
    stored = segmenter.meta.get("presence")
    image = {"score": "max_probability" if stored is None else "presence",
             "temperature": None if stored is None else stored["temperature"], "point_from": "deploy",
             "val_auc": presence.roc_auc(val_scores, val.lesion),
             **presence.image_level([r.score for r in results], test.lesion, segmenter.operating_point,
                                    params.bootstrap, params.seed, present=[r.lesion_present for r in results])}
    summary = {"threshold": rule.threshold, "threshold_from": "deploy", "postprocess": rule.to_dict(),
               **metrics.aggregate(rows, params.bootstrap, params.seed), **by_source(rows, test, params),
               "image_level": image}
    rows = [{"variant": name, "threshold": rule.threshold, **row, "score": r.score,
             "lesion_present": r.lesion_present} for row, r in zip(rows, results)]
    return summary, rows, curve, preds


def by_source(rows: Sequence[dict], split: Split, params: EvaluateParams) -> dict:
    """``{"by_source": {name: aggregates}}`` when the split holds images of more than one source, else nothing."""
    names = list(dict.fromkeys(split.sources))
    if len(names) < 2:
        return {}
    source_of = dict(zip(split.ids, split.sources))
    return {"by_source": {name: metrics.aggregate([row for row in rows if source_of[row["id"]] == name],
                                                  params.bootstrap, params.seed) for name in names}}


def run(params: Params, models_dir: Path, data_dir: Path, raw_dir: Path, split_csv: Path,
        variants: Sequence[Variant] = VARIANTS,
        deployable: Path | None = None,
        accurate: Path | None = None) -> tuple[dict, list[dict], dict[str, list[dict]], dict]:
    """Score ``variants`` and, when given, the ``deployable`` file (the edge profile's) and the ``accurate``
    profile's through the runtime; returns (metrics, per-case rows, val threshold curves, the deployed variant's test
    predictions with the split, for the sample figure)."""
    mode = params.preprocess.normalize
    val = Split(data_dir, raw_dir, split_csv, "val", mode)
    test = Split(data_dir, raw_dir, split_csv, "test", mode)
    metrics, rows, curves = {}, [], {}
    samples: dict = {"split": test, "preds": {}, "rows": {}}
    for variant in tqdm(variants, desc="evaluate", unit="variant"):
        summary, variant_rows, curves[variant.name], preds = score_variant(
            variant, models_dir, val, test, params.evaluate, params.deploy.presence.sensitivity)
        metrics[variant.name] = _rounded(summary)
        rows += variant_rows
        if variant.name in SAMPLE_VARIANTS:
            samples["preds"][variant.name], samples["rows"][variant.name] = preds, variant_rows
        tqdm.write(f"evaluate: {variant.name:13s} test Dice {summary['dice']:.4f} "
                   f"[{summary['dice_ci95'][0]:.4f}, {summary['dice_ci95'][1]:.4f}]  "
                   f"threshold {summary['threshold']:.2f}  {_image_line(summary['image_level'])}")
    for name, path in ((n, p) for n, p in ((DEPLOYED, deployable), (ACCURATE, accurate)) if p is not None):
        summary, deployed_rows, curves[name], preds = score_deployed(path, val, test, params.evaluate, name)
        if name == DEPLOYED:  # first, so that the figure picks its cases by the deployable file's scores
            samples["preds"] = {DEPLOYED: preds, **samples["preds"]}
            samples["rows"] = {DEPLOYED: deployed_rows, **samples["rows"]}
        metrics[name], rows = _rounded(summary), rows + deployed_rows
        tqdm.write(f"evaluate: {name:13s} test Dice {summary['dice']:.4f}, normal clean "
                   f"{summary['normal_clean']:.4f} with {summary['postprocess']}  "
                   f"{_image_line(summary['image_level'])}")
    head = {"split": "test", "n_images": len(test.ids), "scored_at": "original resolution",
            "headline": "mean Dice over lesion images (benign + malignant)"}
    steps = _rounded(paired_steps(rows, params.evaluate))
    return {**head, "variants": metrics, "paired": steps}, rows, curves, samples


def _image_line(image: dict) -> str:
    return (f"image-level AUC {image['auc']:.4f}, sensitivity {image['sensitivity']:.4f}, specificity "
            f"{image['specificity']:.4f} at {image['threshold']:.4f} ({image['score']})")


def paired_steps(rows: Sequence[dict], params: EvaluateParams) -> dict[str, dict]:
    """:data:`STEPS` whose two variants were scored, as ``"after - before"``: the paired bootstrap CI of the
    per-lesion-image Dice difference (:func:`ultraseg.metrics.paired_bootstrap`)."""
    dice = {}
    for row in rows:
        if row["ref_pixels"] > 0:
            dice.setdefault(row["variant"], {})[row["id"]] = row["dice"]
    out = {}
    for after, before, what in STEPS:
        if after in dice and before in dice:
            ids = sorted(dice[after])
            scores = [np.array([dice[name][i] for i in ids]) for name in (after, before)]
            out[f"{after} - {before}"] = {"step": what,
                                          **metrics.paired_bootstrap(*scores, params.bootstrap, params.seed)}
    return out


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4) if np.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------- outputs


def curve_rows(curves: dict[str, list[dict]]) -> list[dict]:
    """One row per threshold, one val-Dice column per variant (DVC draws one line per column)."""
    names = list(curves)
    return [{"threshold": point["threshold"], **{name: round(curves[name][j]["dice"], 4) for name in names}}
            for j, point in enumerate(curves[names[0]])]


def roc_rows(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Per variant, the test ROC curve of its image-level scores in the per-case ``rows``: one row ``{fpr, tpr,
    threshold}`` per distinct score (:func:`ultraseg.presence.roc_curve`; the first point, at no threshold, has
    threshold 1 + the highest score); none for a variant scored without both lesion and normal images."""
    out = {}
    for name in dict.fromkeys(row["variant"] for row in rows):
        mine = [row for row in rows if row["variant"] == name]
        labels = np.array([row["ref_pixels"] > 0 for row in mine])
        if labels.all() or not labels.any():
            continue
        fpr, tpr, cut = presence.roc_curve(np.array([row["score"] for row in mine]), labels)
        cut[0] = cut[1] + 1
        out[name] = [{"fpr": round(float(f), 4), "tpr": round(float(t), 4), "threshold": round(float(c), 6)}
                     for f, t, c in zip(fpr, tpr, cut)]
    return out


def roc_figure(roc: dict[str, list[dict]], variants: dict[str, dict], path: Path) -> None:
    """Each variant's test ROC curve (:func:`roc_rows`) with its AUC, and the point its val-chosen operating point
    gives on test marked."""
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5))
    for k, (name, points) in enumerate(roc.items()):
        image = variants[name]["image_level"]
        style = "--" if name.endswith("_onnx") else "-"
        line, = ax.plot([p["fpr"] for p in points], [p["tpr"] for p in points], ls=style, lw=1.2, alpha=0.85,
                        drawstyle="steps-post", label=f"{name} (AUC {image['auc']:.3f})")
        ax.plot(1 - image["specificity"], image["sensitivity"], "os^vdx*"[k % 7], color=line.get_color())
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("false-positive rate (normal scans answered lesion)")
    ax.set_ylabel("sensitivity (lesion scans answered lesion)")
    ax.set_title("Is there a lesion? Test ROC; markers: the operating point chosen on val", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    figures.save(fig, path)


def dice_figure(rows: Sequence[dict], path: Path) -> None:
    """Box plot with every lesion image's test Dice, one column per variant."""
    plt = figures.pyplot()
    names = list(dict.fromkeys(row["variant"] for row in rows))
    data = [[r["dice"] for r in rows if r["variant"] == n and r["ref_pixels"] > 0] for n in names]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 4))
    ax.boxplot(data, showmeans=True)
    for k, values in enumerate(data, start=1):
        jitter = np.random.default_rng(k).uniform(-0.12, 0.12, len(values))
        ax.scatter(k + jitter, values, s=5, alpha=0.35, color="tab:blue")
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    ax.set_ylabel("test Dice per lesion image")
    ax.set_title("Test Dice distribution (triangle: mean)")
    fig.tight_layout()
    figures.save(fig, path)


def size_figure(rows: Sequence[dict], names: Sequence[str], path: Path) -> None:
    """Test Dice of every lesion image against the lesion's area, per model, with the mean per size quintile."""
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in names:
        lesion = [r for r in rows if r["variant"] == name and r["ref_pixels"] > 0]
        area = np.array([r["ref_pixels"] for r in lesion], dtype=np.float64)
        dice = np.array([r["dice"] for r in lesion], dtype=np.float64)
        dots = ax.scatter(area, dice, s=8, alpha=0.35, label=f"{name} (per image)")
        edges = np.quantile(area, np.linspace(0, 1, 6))
        bins = np.clip(np.searchsorted(edges, area, side="right") - 1, 0, 4)
        filled = [b for b in range(5) if (bins == b).any()]
        ax.plot([np.exp(np.log(area[bins == b]).mean()) for b in filled], [dice[bins == b].mean() for b in filled],
                "-o", color=dots.get_facecolor()[0][:3], label=f"{name} (mean per size quintile)")
    ax.set_xscale("log")
    ax.set_xlabel("lesion area (pixels of the mirror's image, log scale)")
    ax.set_ylabel("test Dice")
    ax.set_title("Dice against lesion size", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    figures.save(fig, path)


def threshold_figure(curves: dict[str, list[dict]], chosen: dict[str, float], path: Path) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    # A model and its ONNX twin give almost the same curve: their own line styles and markers keep both visible.
    for k, (name, curve) in enumerate(curves.items()):
        style = "--" if name.endswith("_onnx") else "-." if name.endswith("_int8") else "-"
        line, = ax.plot([p["threshold"] for p in curve], [p["dice"] for p in curve], label=name, ls=style,
                        marker="os^vdx*"[k % 7], markersize=3, markevery=(k % 3, 3), alpha=0.85)
        ax.axvline(chosen[name], color=line.get_color(), lw=0.6, ls=":")
    ax.set_xlabel("probability threshold")
    ax.set_ylabel("val Dice (lesion images)")
    ax.set_title("Threshold chosen on val (dotted)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figures.save(fig, path)


def sample_figure(split: Split, preds: dict[str, Sequence[np.ndarray]], rows: dict[str, Sequence[dict]],
                  title: str, path: Path) -> None:
    """The best, median and worst lesion cases of the first model in ``preds`` and two normal images, with every
    model's prediction side by side (:func:`ultraseg.figures.cases_figure`)."""
    figures.cases_figure(split.images, split.refs, split.ids, preds, rows, title, path)
