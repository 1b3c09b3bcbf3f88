"""Is an ensemble of teachers from different seeds a stronger teacher to distil from than one? (issue #30, item 3)

Trains K teachers with params.yaml's train section, at train.seed, train.seed + 1, ..., each exactly as the train
stage does (ultraseg.pipeline.train.run), several at once in their own processes (the GPU is far from busy with
one); then scores on the VAL split each member alone and the ensemble of all K (ultraseg.ensemble.Ensemble: the
mean of the members' logits and presence logits), and the ensembles of the first k members for k = 2 .. K-1:

  val_dice          lesion-image mean Dice at the model's own best val threshold (the evaluate stage's grid),
                    probabilities resized to each image's original resolution
  val_presence_auc  ROC AUC of the presence logit, lesion against normal val images
  shift             the scanner-shift suite (ultraseg.shifts) on val at one severity, seeded by evaluate.seed as
                    the robustness stage does: mean and worst Dice drop against the unshifted val images, and the
                    share of lesion images with no predicted pixel (the mask is prob > the model's val threshold,
                    not gated by the presence answer)

Nothing reads the test split. Results (with member mean and sd, and the wall time of each teacher) go to
experiments/ensemble.json (REPORT reads it), rewritten after every trained teacher and every scored model, so an
interrupted run leaves what it finished. dvclive's curves are not written: the probe needs none, and dvclive's repository
detection needs the whole of DVC installed.

    python scripts/ensemble_probe.py --members 5                          # GPU: the committed 28 epochs
    python scripts/ensemble_probe.py --members 2 --epochs 1 --train-images 48 --val-images 24   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import shlex
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from ultraseg import params as params_mod
from ultraseg.io import read_csv, write_csv, write_json

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------- training


def load_params(path: Path, train_overrides: dict) -> params_mod.Params:
    data = yaml.safe_load(Path(path).read_text())
    data["train"].update(train_overrides)
    return params_mod.from_dict(data)


def train_member(params_path: Path, overrides: dict, data: Path, split: Path, work: Path) -> dict:
    """Train one teacher as the train stage does (in a process of its own); its stage summary and wall time."""
    from ultraseg import training
    from ultraseg.pipeline import train

    training.open_live = lambda _folder: contextlib.nullcontext()  # no dvclive curves (module docstring)
    params = load_params(params_path, overrides)
    seed = params.train.seed
    out = work / f"teacher_seed{seed}.pt"
    start = time.perf_counter()
    summary = train.run(params, data, split, out, work / f"live_seed{seed}", work / f"resume_seed{seed}.pt")
    return {"seed": seed, "checkpoint": str(out), "wall_seconds": round(time.perf_counter() - start, 1), **summary}


def subset_split(split_csv: Path, out: Path, train_images: int | None, val_images: int | None) -> Path:
    """The split with only ``train_images`` train and ``val_images`` val ids kept, evenly spaced through the file
    (so every class is in; smoke tests), the others marked ``unused``."""
    if train_images is None and val_images is None:
        return split_csv
    rows = read_csv(split_csv)
    for name, count in (("train", train_images), ("val", val_images)):
        mine = [row for row in rows if row["split"] == name]
        if count is not None and count < len(mine):
            kept = set(np.linspace(0, len(mine) - 1, count).round().astype(int))
            for k, row in enumerate(mine):
                row["split"] = name if k in kept else "unused"
    write_csv(out, rows, list(rows[0]))
    return out


# ---------------------------------------------------------------------------------------------------- scoring


class ShiftSuite:
    """The val images under every shift at one severity, preprocessed to network inputs, with their references;
    ``none`` is the unshifted val images through the same path."""

    def __init__(self, val, params: params_mod.Params, severity: str):
        from ultraseg import shifts
        from ultraseg.runtime.preprocess import normalize, preprocess

        self.severity, self.ids, self.classes = severity, val.ids, val.classes
        self.conditions: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
        for shift in tqdm([None, *shifts.SHIFTS], desc=f"shift suite ({severity})", unit="shift"):
            pairs = [(image, ref) if shift is None else
                     shifts.apply(shift, severity, image, ref, params.evaluate.seed, k)
                     for k, (image, ref) in enumerate(zip(val.images, val.refs))]
            inputs = normalize(np.stack([preprocess(image, params.preprocess) for image, _ in pairs]),
                               params.preprocess.normalize)
            self.conditions["none" if shift is None else shift.name] = inputs, [ref for _, ref in pairs]


def outputs_at_full_size(model, inputs: np.ndarray, refs: list[np.ndarray], device) -> tuple[list, np.ndarray | None]:
    """Probabilities at each reference's resolution and the presence logits (N,) (None without a head)."""
    import torch

    from ultraseg.runtime.preprocess import resize_probabilities
    from ultraseg.training import predict_outputs

    logits, presence = predict_outputs(model, inputs, device, batch_size=128)
    probs = torch.sigmoid(logits[:, 0]).numpy()
    return ([resize_probabilities(p, ref.shape) for p, ref in zip(probs, refs)],
            None if presence is None else presence[:, 0].numpy())


def image_scores(probs: list[np.ndarray], presence: np.ndarray | None) -> np.ndarray:
    """The presence logit, or the highest pixel probability for a network without a presence head."""
    return presence if presence is not None else np.array([p.max() for p in probs])


def score_model(model, val, suite: ShiftSuite, params: params_mod.Params, device) -> dict:
    from ultraseg import metrics
    from ultraseg.pipeline.evaluate import thresholds

    start = time.perf_counter()
    probs, presence = outputs_at_full_size(model, val.inputs, val.refs, device)
    curve = metrics.threshold_curve(probs, val.refs, thresholds(params.evaluate))
    threshold = metrics.choose_threshold(curve)
    val_dice = next(point["dice"] for point in curve if point["threshold"] == threshold)
    per_shift = {}
    for name, (inputs, refs) in suite.conditions.items():
        shifted, logits = outputs_at_full_size(model, inputs, refs, device)
        rows = metrics.evaluate_cases([p > threshold for p in shifted], refs, suite.ids, suite.classes)
        lesion = [row for row in rows if row["ref_pixels"] > 0]
        per_shift[name] = {"dice": metrics.aggregate(rows, n_boot=1)["dice"],
                           "missed": sum(row["pred_pixels"] == 0 for row in lesion) / max(len(lesion), 1),
                           "presence_auc": metrics.roc_auc(image_scores(shifted, logits),
                                                           [row["ref_pixels"] > 0 for row in rows])}
    clean = per_shift.pop("none")
    drops = {name: clean["dice"] - s["dice"] for name, s in per_shift.items()}
    worst = max(drops, key=drops.get)
    shift = {"severity": suite.severity, "clean_dice": clean["dice"], "clean_missed": clean["missed"],
             "mean_drop": float(np.mean(list(drops.values()))), "worst_shift": worst, "worst_drop": drops[worst],
             "mean_missed": float(np.mean([s["missed"] for s in per_shift.values()])),
             "most_missed": max(s["missed"] for s in per_shift.values()),
             "mean_presence_auc": float(np.nanmean([s["presence_auc"] for s in per_shift.values()])),
             "per_shift": {name: {**s, "drop": drops[name]} for name, s in per_shift.items()}}
    return _rounded({"threshold": threshold, "val_dice": val_dice,
                     "val_presence_auc": metrics.roc_auc(image_scores(probs, presence), val.lesion),
                     "shift": shift, "seconds": time.perf_counter() - start})


HEADLINE = (("val_dice",), ("val_presence_auc",), ("shift", "mean_drop"), ("shift", "worst_drop"),
            ("shift", "mean_missed"), ("shift", "most_missed"), ("shift", "mean_presence_auc"))
"""The figures summarised over members and compared with the ensemble."""


def figure(score: dict, path: tuple[str, ...]) -> float:
    for key in path:
        score = score[key]
    return score


def member_summary(members: list[dict], ensemble: dict | None) -> dict:
    """Per headline figure: the members' mean, sd (ddof 1), min and max, and the ensemble minus the member mean."""
    out = {}
    for path in HEADLINE:
        values = np.array([figure(m, path) for m in members], dtype=np.float64)
        row = {"mean": values.mean(), "sd": values.std(ddof=1) if len(values) > 1 else float("nan"),
               "min": values.min(), "max": values.max()}
        if ensemble is not None:
            row["ensemble_minus_mean"] = figure(ensemble, path) - values.mean()
            row["ensemble_minus_best"] = figure(ensemble, path) - (values.min() if "drop" in path[-1] or "missed"
                                                                   in path[-1] else values.max())
        out[".".join(path)] = row
    return _rounded(out)


def _rounded(value):
    if isinstance(value, (float, np.floating)):
        return round(float(value), 4) if np.isfinite(value) else float(value)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    summary, _, details = __doc__.strip().partition("\n")
    ap = argparse.ArgumentParser(description=summary, epilog=details.strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params file (default: %(default)s)")
    ap.add_argument("--data", type=Path, default=REPO / "data/preprocessed", help="preprocess stage output")
    ap.add_argument("--raw", type=Path, default=REPO / "data/raw", help="fetch stage output (val images are read)")
    ap.add_argument("--split", type=Path, default=REPO / "data/split.csv", help="split stage output")
    ap.add_argument("--members", type=int, default=5, help="teachers trained, K (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=None, help="first member's seed (default: train.seed)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per teacher (default: train.epochs)")
    ap.add_argument("--parallel", type=int, default=None,
                    help="teachers trained at once, one process each (default: all K on CUDA, 1 on a CPU)")
    ap.add_argument("--device", default=None, help="train.device for training and scoring (default: params')")
    ap.add_argument("--reference", type=Path, action="append", default=[],
                    help="a teacher checkpoint scored alongside, e.g. the committed models/teacher.pt (repeatable)")
    ap.add_argument("--severity", default="moderate", choices=("mild", "moderate", "strong"),
                    help="shift-suite severity (default: %(default)s)")
    ap.add_argument("--train-images", type=int, default=None, help="first N train images only (smoke tests)")
    ap.add_argument("--val-images", type=int, default=None, help="first N val images only (smoke tests)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ensemble_probe"), help="checkpoints (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=REPO / "experiments/ensemble.json", help="default: %(default)s")
    args = ap.parse_args(argv)
    if args.members < 0 or args.members == 0 and not args.reference:
        ap.error("--members must be at least 1, or 0 with --reference (score references only)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from ultraseg import checkpoint
    from ultraseg.ensemble import Ensemble
    from ultraseg.pipeline.evaluate import Split
    from ultraseg.training import select_device

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, as seed_everything asks
    started = time.perf_counter()
    params = params_mod.load(args.params)
    device = select_device(args.device or params.train.device)
    seed = params.train.seed if args.seed is None else args.seed
    seeds = [seed + k for k in range(args.members)]
    epochs = params.train.epochs if args.epochs is None else args.epochs
    parallel = args.parallel or (max(1, args.members) if device.type == "cuda" else 1)
    cores = len(os.sched_getaffinity(0))
    args.work.mkdir(parents=True, exist_ok=True)
    split = subset_split(args.split, args.work / "split.csv", args.train_images, args.val_images)
    result = {
        "question": "does a mean-logit ensemble of teachers from different seeds beat one teacher? (issue #30)",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]), "split": "val", "test_read": False,
        "members": args.members, "seeds": seeds, "epochs": epochs,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cores": cores, "parallel_training": parallel,
        "subset": {"train_images": args.train_images, "val_images": args.val_images},
        "references": [str(path) for path in args.reference],
        "scoring": textwrap.dedent(__doc__.split("\n\n")[2]).strip(), "training": [], "scores": {}, "complete": False,
    }
    write_json(args.out, result)

    overrides = {"epochs": epochs, "threads": max(1, cores // parallel), "device": device.type}
    if seeds:
        with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = [pool.submit(train_member, args.params, {**overrides, "seed": s}, args.data, split, args.work)
                    for s in seeds]
            for job in tqdm(as_completed(jobs), total=len(jobs), desc="teachers", unit="teacher"):
                result["training"] = sorted([*result["training"], job.result()], key=lambda r: r["seed"])
                write_json(args.out, result)
    result["train_seconds"] = round(time.perf_counter() - started, 1)

    val = Split(args.data, args.raw, split, "val", params.preprocess.normalize)
    suite = ShiftSuite(val, params, args.severity)
    models = [checkpoint.load(row["checkpoint"], device)[0] for row in result["training"]]
    names = [f"member_seed{s}" for s in seeds]
    candidates = dict(zip(names, models))
    if models:
        candidates["ensemble"] = Ensemble(models)
        candidates |= {f"ensemble_first{k}": Ensemble(models[:k]) for k in range(2, len(models))}
    candidates |= {f"reference_{path.stem}": checkpoint.load(path, device)[0] for path in args.reference}
    for name, model in tqdm(candidates.items(), desc="scoring on val", unit="model"):
        result["scores"][name] = score = score_model(model, val, suite, params, device)
        shift = score["shift"]
        tqdm.write(f"{name:18s} val Dice {score['val_dice']:.4f} (t {score['threshold']:.2f})  presence AUC "
                   f"{score['val_presence_auc']:.4f}  {args.severity} shifts: mean drop {shift['mean_drop']:.4f}, "
                   f"missed {shift['mean_missed']:.4f} (most {shift['most_missed']:.4f})")
        if members := [result["scores"][n] for n in names if n in result["scores"]]:
            result["member_summary"] = member_summary(members, result["scores"].get("ensemble"))
        write_json(args.out, result)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["complete"] = True
    write_json(args.out, result)
    print(f"ensemble probe: {args.members} teachers in {result['train_seconds']} s, -> {args.out}")


if __name__ == "__main__":
    main()
