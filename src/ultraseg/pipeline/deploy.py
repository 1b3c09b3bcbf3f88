"""The deploy stage's work: choose a model's threshold and post-processing on val, through the runtime a user runs,
and write the deployable file that carries them: the int8 model for the ``edge`` profile, the fp32 teacher for the
``accurate`` one (:data:`ultraseg.runtime.model_files.PROFILES`).

The rule (:class:`ultraseg.runtime.PostProcess`) is searched over the ``deploy`` params grid on the val images
at their original resolution, with the model run once per image and, where ``deploy.flips`` allows, averaged over
a left-right flip: among the rules whose lesion-mean Dice is within ``dice_tolerance`` of the best one, the rule
that leaves the most normal images clean wins (ties: higher Dice, then without the flip, which costs a second model
call, then the simpler rule, earlier in the grid). Test is never looked at.

For a network with a presence output the image-level answer comes first: the model's presence logits on val
are calibrated by a temperature (:func:`ultraseg.presence.fit_temperature`) and the operating point is the highest
that answers "lesion" on ``deploy.presence.sensitivity`` of the val lesion scans
(:func:`ultraseg.presence.operating_point`). Every rule is then scored with that answer applied (a mask only where
it says "lesion", and with ``fill_empty`` the region around the peak where the rule draws nothing), and a rule whose
val image-level sensitivity (answered "lesion" with a non-empty mask) falls below the target is refused, so a gate
on the highest probability is kept only where it still earns its place. A network without the output is deployed as
before: the highest probability and the gates decide.

The summary also lists the val operating points the choice moves along (the rules no other rule beats on both lesion
Dice and clean normal scans), so a user who weighs a false alarm on a normal scan differently can see what another
``dice_tolerance`` would buy.

The file also carries the out-of-distribution check (:mod:`ultraseg.ood`): the network's pooled deepest features as a
second output, the Gaussians of the train scans' features and frame statistics (with scanner-shifted copies of the
scans), and the distance threshold that at least ``deploy.ood.val_pass`` of the val scans pass.
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ultraseg import metrics, ood, onnx_io, params as params_mod, presence as presence_mod
from ultraseg.data.busi import load_raw
from ultraseg.io import split_ids
from ultraseg.params import DeployParams, Params, PresenceParams
from ultraseg.runtime.ood import frame_stats
from ultraseg.runtime.postprocess import PostProcess
from ultraseg.runtime.segmenter import Segmenter


def candidate_rules(params: DeployParams) -> list[PostProcess]:
    """Every rule of the grid; a gate at or below the threshold changes nothing and is left out."""
    step = params.threshold_step
    thresholds = np.round(np.arange(step, 1 - step / 2, step), 6).tolist()
    return [PostProcess(threshold=t, gate=g, min_area=a, keep_largest=k)
            for t, g, a, k in itertools.product(thresholds, params.gates, params.min_areas, params.keep_largest)
            if g == 0 or g > t]


def score(rule: PostProcess, probs: list[np.ndarray], refs: list[np.ndarray], present: list[bool] | None = None,
          fill_empty: bool = False) -> dict[str, float]:
    """Lesion-image mean Dice, ``normal_clean`` and ``sensitivity`` (the share of lesion images answered with a
    non-empty mask) of a rule on images at their own resolution, under the image-level answers ``present``."""
    answers = present if present is not None else [None] * len(probs)
    counts = np.array([[(m & r).sum(), (m & ~r).sum(), (~m & r).sum(), m.any()]
                       for m, r in ((rule.answer(p, a, fill_empty), r) for p, r, a in zip(probs, refs, answers))])
    tp, fp, fn, drawn = counts.T
    lesion = (tp + fn) > 0
    return {"dice": float(np.mean(metrics.dice(tp, fp, fn)[lesion])), "normal_clean": metrics.normal_clean(fp, lesion),
            "sensitivity": float(np.mean(drawn[lesion] > 0))}


def choose(scores: list[dict[str, float]], tolerance: float, sensitivity: float = 0.0) -> int:
    """Index of the rule to deploy (see the module docstring); a score may carry ``cost`` (lower wins a tie).
    Rules below the image-level ``sensitivity`` are refused unless every rule is, and then the most sensitive are
    the ones compared."""
    ok = eligible(scores, sensitivity)
    best = max(scores[k]["dice"] for k in ok)
    near = [k for k in ok if scores[k]["dice"] >= best - tolerance]
    return max(near, key=lambda k: (scores[k]["normal_clean"], scores[k]["dice"], -scores[k].get("cost", 0), -k))


def eligible(scores: list[dict[str, float]], sensitivity: float) -> list[int]:
    """Indices of the rules that reach the image-level ``sensitivity`` (all the most sensitive if none does)."""
    reached = [s.get("sensitivity", 1.0) for s in scores]
    floor = sensitivity if max(reached) >= sensitivity else max(reached)
    return [k for k, r in enumerate(reached) if r >= floor]


def operating_points(rules: list[PostProcess], scores: list[dict[str, float]], sensitivity: float = 0.0) -> list[dict]:
    """The Pareto front of ``scores`` over lesion Dice and ``normal_clean`` among the rules that reach
    ``sensitivity`` (see :func:`eligible`), most normals clean first: for each share of clean normals, the best-Dice
    rule, kept only if it beats the Dice of every rule that cleans more."""
    order = sorted(eligible(scores, sensitivity), key=lambda k: (-scores[k]["normal_clean"], -scores[k]["dice"], k))
    front, best = [], -1.0
    for k in order:
        if scores[k]["dice"] > best:
            best = scores[k]["dice"]
            front.append(rounded(scores[k]) | rules[k].to_dict())
    return front


def val_outputs(model_path: Path, raw: list, flip: bool) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The model's probabilities of each val image at its own resolution, and its presence logits (None
    without the output), through the runtime."""
    segmenter = unchecked(model_path, flip=flip)
    desc = f"deploy: val{' + flip' if flip else ''}"
    outputs = [segmenter.outputs(image) for image, _ in tqdm(raw, desc=desc, unit="img")]
    logits = [logit for _, logit in outputs]
    return [prob for prob, _ in outputs], None if logits[0] is None else np.array(logits, np.float64)


def calibrate(logits: np.ndarray, labels: np.ndarray, params: PresenceParams) -> dict:
    """The presence answer fitted on val: temperature, operating point, and the calibrated score's val AUC,
    sensitivity and specificity at that point."""
    temperature = presence_mod.fit_temperature(logits, labels)
    scores = presence_mod.calibrate(logits, temperature)
    threshold = presence_mod.operating_point(scores, labels, params.sensitivity)
    present = scores >= threshold
    return {"temperature": temperature, "threshold": threshold, "present": present.tolist(),
            "val_auc": presence_mod.roc_auc(scores, labels), "val_sensitivity": float(present[labels].mean()),
            "val_specificity": float((~present[~labels]).mean())}


def run(params: Params, model_path: Path, raw_dir: Path, split_csv: Path, out: Path) -> dict:
    """Choose the rule on val, write ``out`` (the model with the rule in its metadata); return the summary."""
    ids = split_ids(split_csv, "val")
    raw = [load_raw(raw_dir, i) for i in ids]
    refs = [mask for _, mask in raw]
    labels = np.array([ref.any() for ref in refs])
    rules = candidate_rules(params.deploy)
    settings = params.deploy.presence
    scores, answers = {}, {}
    for flip in sorted(set(params.deploy.flips)):
        probs, logits = val_outputs(model_path, raw, flip)
        answers[flip] = None if logits is None else calibrate(logits, labels, settings)
        present = None if logits is None else answers[flip]["present"]
        scores[flip] = [score(rule, probs, refs, present, settings.fill_empty) | {"cost": int(flip)}
                        for rule in tqdm(rules, desc="deploy: rules", unit="rule")]
    options = [(flip, k) for flip in scores for k in range(len(rules))]
    target = settings.sensitivity if answers[options[0][0]] is not None else 0.0
    flip, chosen = options[choose([scores[f][k] for f, k in options], params.deploy.dice_tolerance, target)]
    rule, answer = rules[chosen], answers[flip]
    stored = None if answer is None else {"temperature": answer["temperature"], "threshold": answer["threshold"],
                                           "fill_empty": settings.fill_empty, "sensitivity": settings.sensitivity}
    ood.write_with_features(model_path, out)
    onnx_io.write_with_metadata(out, out, {"postprocess": rule.to_dict(), "threshold": rule.threshold,
                                           "flip": flip, "stream": params_mod.to_dict(params.deploy.stream),
                                           "deploy_params_hash": params_mod.digest(params.deploy)}
                                | ({} if stored is None else {"presence": stored}))
    check = fit_ood(params, out, raw_dir, split_csv, [image for image, _ in raw])
    return {
        "file": str(out), "bytes": out.stat().st_size, "val_images": len(ids), "rules_tried": len(options),
        "dice_tolerance": params.deploy.dice_tolerance,
        "flip": flip,
        "postprocess": rule.to_dict(),
        "presence": None if answer is None else rounded({k: v for k, v in answer.items() if k != "present"})
        | {"sensitivity_target": settings.sensitivity, "fill_empty": settings.fill_empty,
           "rule_meets_target": scores[flip][chosen]["sensitivity"] >= settings.sensitivity},
        "stream": params_mod.to_dict(params.deploy.stream),
        "val_chosen": rounded(scores[flip][chosen]),
        "val_operating_points": operating_points(rules, scores[flip], target),
        "ood": check,
    } | {f"val_threshold_only{'_flip' if flip else ''}": best_plain(rules, scores[flip]) for flip in scores}


def fit_ood(params: Params, out: Path, raw_dir: Path, split_csv: Path, val: list[np.ndarray]) -> dict:
    """Fit the out-of-distribution check on the train scans (and ``deploy.ood.augmented_copies`` scanner-shifted
    copies of each, :func:`ultraseg.ood.augmented_copies`) and its threshold on ``val``, through the file ``out``
    itself, store it in ``out``'s metadata, and return its summary (the val pass rate is the share of val scans the
    runtime answers as in distribution)."""
    segmenter, settings = unchecked(out), params.deploy.ood
    originals = [load_raw(raw_dir, i)[0] for i in split_ids(split_csv, "train")]
    scans = originals + ood.augmented_copies(originals, settings.augmented_copies, params.train.seed)
    train = [segmenter.features(image) for image in tqdm(scans, desc="deploy: ood train", unit="img")]
    val_features = [segmenter.features(image) for image in tqdm(val, desc="deploy: ood val", unit="img")]
    stats = ([frame_stats(image) for image in scans], [frame_stats(image) for image in val]) if settings.frame_stats \
        else (None, None)
    meta = ood.fit(train, val_features, settings.val_pass, settings.shrinkage, settings.min_side, *stats)
    onnx_io.write_with_metadata(out, out, {"ood": meta})
    passed = [r.in_distribution for r in Segmenter(out).segment_batch(val)]
    return {"features": len(meta["mean"]), "frame_stats": len(meta.get("frame_stats", {}).get("mean", [])),
            "train_images": len(originals), "fitted_frames": len(train), "threshold": round(meta["threshold"], 4),
            "val_pass_target": settings.val_pass, "val_pass": round(float(np.mean(passed)), 4)}


def unchecked(path: Path, **kwargs) -> Segmenter:
    """A Segmenter of a file the deploy stage is still writing, which has no out-of-distribution check yet."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no out-of-distribution check")
        warnings.filterwarnings("ignore", message=".*no presence output or no calibrated operating point")
        return Segmenter(path, **kwargs)


def best_plain(rules: list[PostProcess], scores: list[dict[str, float]]) -> dict[str, float]:
    """The best val lesion Dice of a threshold alone, without post-processing, and its ``normal_clean``."""
    plain = [k for k, r in enumerate(rules) if r == PostProcess(threshold=r.threshold)]
    best = plain[choose([scores[k] for k in plain], 0.0)]
    return {"threshold": rules[best].threshold, **rounded(scores[best])}


def rounded(score: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6 if k in ("temperature", "threshold") else 4) for k, v in score.items() if k != "cost"}
