"""Grids of `dvc exp run` experiments for REPORT.md, queued and run by DVC's own queue, then collected.

Three grids:

  comparison  speckle filters and architectures, each one change from the committed params, training the teacher
              only (`dvc exp run train`) at one reduced budget (--epochs); collected into
              experiments/comparison.json with the teacher's val metrics and the filter's speckle/edge scores
  seeds       the whole pipeline (teacher, distill -> prune -> quantize -> deploy, evaluate ...) at the default
              budget with other training seeds (--seeds); collected into experiments/seeds.json with the mean and
              sd of every metrics/headline.json number over the committed run and these seeds
  levers      accuracy levers, each one change from the committed params, run through the whole pipeline (DVC's
              run cache restores the stages a lever leaves unchanged); collected into experiments/levers.json with
              the val numbers a lever is chosen by (the student's and the deployed file's Dice, clean normals, and
              the deployed file's shift-suite drop and misses on val) and, for the record only, the test headline;
              with --seeds, each lever also runs at those training seeds (LEVER-sSEED) beside the committed params
              (seed-SEED), and every lever run at two or more seeds gets its mean and sd; with --folds K, each lever
              and the committed params also run on each of the K grouped cross-validation folds of train + val
              (split.fold, LEVER-fK and fold-K), and get their cross-validation mean and sd over the folds

Experiments are queued with `dvc exp run --queue` and run by `dvc queue start --jobs N`; each runs in a copy of the
project under .dvc/tmp/exps, so fetch.source is passed as an absolute path. The committed run stays the default
seed; these runs live in DVC's experiment refs and in the JSON this script writes.

  python scripts/experiments.py --grid comparison --run --collect --epochs 8
  python scripts/experiments.py --grid seeds --run --collect --seeds 43 44 --jobs 1
  python scripts/experiments.py --grid levers --run --collect
  python scripts/experiments.py --grid levers --run --collect --seeds 43 44 --only scanner-augment-s43 seed-43
  python scripts/experiments.py --grid levers --run --collect --folds 5   # needs split.folds: 5
  dvc exp show --drop '.*' --keep '^(Experiment|headline\\..*|train\\.seed)$'   # the same runs, interactively
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from ultraseg.experiments import COMMITTED, NO_DISTILLATION, VAL_METRICS, Run, cv, decode_run, mean_sd, spreads
from ultraseg.io import read_json, write_json

COMPARISON: dict[str, dict[str, str]] = {
    "filter-none": {"preprocess.filter": "none"},
    "filter-lee": {"preprocess.filter": "lee"},
    "filter-frost": {"preprocess.filter": "frost"},
    "filter-srad": {"preprocess.filter": "srad"},
    "arch-attention_unet": {"train.model.name": "attention_unet"},
    "arch-res_unet": {"train.model.name": "res_unet"},
}
LEVERS: dict[str, dict[str, str]] = {
    # a student working below the input's resolution sees a shrunk or narrowed lesion in only a few cells: its own,
    # wider zoom and stretch ranges, at strengths other than the shift suite's levels
    "student-geometry": {"distill.augment.scale": "0.35", "distill.augment.aspect": "0.2"},
    # what distillation gains: the same student on the masks alone (the default run no longer trains this baseline)
    NO_DISTILLATION: {"distill.kd_weight": "0"},
    # the teacher (and, through train.augment, the student) shown what other scanners do: a wider zoom, other aspect
    # ratios, coarser and stronger speckle, and burned-in calipers and text on any image, normals included; at
    # ranges other than the shift suite's levels, so that the suite stays a proxy rather than a target
    "scanner-augment": {"train.augment.scale": "0.25", "train.augment.aspect": "0.15", "train.augment.speckle": "0.25",
                        "train.augment.speckle_p": "0.5", "train.augment.speckle_grain": "2.0",
                        "train.augment.annotations_p": "0.3"},
    # speckle alone, in the network input between the suite's mild and moderate levels (scripts/speckle_strength.py),
    # though drawn after CLAHE, not before it as the suite's is
    "speckle-strength": {"train.augment.speckle": "0.3", "train.augment.speckle_grain": "1.5",
                         "train.augment.speckle_p": "0.5"},
    # per-image normalisation in the teacher: BatchNorm's running statistics are BUSI's scanner, gain and speckle,
    # and carry over unchanged into another scanner's frames
    "instance-norm": {"train.model.norm": "instance"},
    # a low-pass before CLAHE, below the scale of a lesion edge at network size: CLAHE amplifies whatever grain the
    # scanner leaves, and a blur that narrow removes grain rather than the edges a lesion is traced by
    "prefilter": {"preprocess.filter": "gaussian", "preprocess.filters.gaussian.sigma": "2.0"},
    # the teacher's per-image normalisation in the student too; int8 keeps InstanceNormalization in float, which the
    # benchmark stage prices
    "student-instance-norm": {"distill.student.norm": "instance"},
    # normal scans pressed clean where the deployment gate reads them, their highest logits, in teacher and student:
    # per-image normalisation removes the absolute echo level a normal scan was recognised by. The weight is small
    # because the term presses on 1% of a scan's pixels, so its pull on them is ~100 times pixel-mean BCE's
    "empty-peak": {"train.loss.empty": "0.1"},
    # the same with per-image normalisation in the student too: the two levers together, since both act on what the
    # gate reads of a normal scan
    "empty-peak-student-in": {"train.loss.empty": "0.1", "distill.student.norm": "instance"},
    # the term in the student alone (with per-image normalisation), which the gate reads, leaving the teacher
    # untouched
    "student-empty-peak": {"distill.empty_weight": "0.1", "distill.student.norm": "instance"},
    # normal scans distilled towards the teacher's own background level rather than its false positives there,
    # with no new loss term to balance against the lesions
    "normal-background": {"distill.normal_target": "background"},
    # the same with per-image normalisation in the student too: the two levers together, since both act on what the
    # gate reads of a normal scan
    "normal-background-student-in": {"distill.normal_target": "background", "distill.student.norm": "instance"},
    # a teacher of three seeds, the mean of their logits and presence logits, as the distillation target: seeds make
    # partly independent mistakes, so their average is a better teacher of both the masks and the presence answer
    "ensemble-teacher": {"train.members": "3"},
    # the teacher's presence answer ranks the val scans better than the student's, which learns it through the
    # distillation term: that term weighted three times as much, against the labels' presence term of the task loss
    "student-presence-kd": {"distill.presence_weight": "3"},
    # a quarter of the presence head's gradient into the teacher's shared layers: all of it cost the masks, none of
    # it leaves the head a probe of features the masks alone shaped, and such a probe ranks scans worse than the
    # student's head, which trains its features for both answers
    "teacher-presence-grad": {"train.model.presence_grad": "0.25"},
    # the deploy stage may average the deployable file over a left-right mirror image, presence logit included: a
    # lesion's evidence does not depend on the side of the frame it sits on, so the mirror's answer is a second,
    # partly independent look at the same scan, for a second run of the small network
    "deploy-flip": {"deploy.flips": "[false,true]"},
}
LEVER_CURVES = {NO_DISTILLATION: "dvclive/distill/plots/metrics/val/dice.tsv"}
"""Lever -> the learning curve its run keeps for REPORT's figure: the student trained without distillation is the
baseline the committed run's distilled student is drawn against (the default run no longer trains it)."""
METRICS = {"metrics/train.json": ("val_dice", "val_iou", "val_normal_clean", "best_epoch", "epochs_run",
                                    "train_minutes", "params", "gmacs"),
           "metrics/preprocess.json": ("enl_ratio", "edge_preservation")}
OUT = {"comparison": Path("experiments/comparison.json"), "seeds": Path("experiments/seeds.json"),
       "levers": Path("experiments/levers.json")}
COMMITS = 20
"""How many commits back to look for experiments: a grid takes long enough that commits land meanwhile."""
COUNTS = ("params", "best_epoch", "epochs_run")
POLL_SECONDS = 10
ABSENT = (None, "None", "-", "")
"""How exp_show fills a metric that a row's files do not hold (another commit's headline had the key)."""


# ---------------------------------------------------------------------------------------------------- running


def experiments(grid: str, epochs: int, seeds: list[int],
                folds: int = 0) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Name -> (the `dvc exp run` target, if any; the -S settings) of every experiment of ``grid``; the levers grid
    also runs at ``seeds`` and on ``folds`` cross-validation folds (0: none)."""
    if grid == "comparison":
        return {f"{name}-e{epochs}": (["train"], {"train.epochs": str(epochs), **sets})
                for name, sets in COMPARISON.items()}
    reseeded = {f"seed-{seed}": ([], {"train.seed": str(seed)}) for seed in seeds}
    if grid != "levers":
        return reseeded
    refolded = {f"fold-{k}": ([], {"split.fold": str(k)}) for k in range(folds)}
    return {**{name: ([], sets) for name, sets in LEVERS.items()}, **reseeded, **refolded,
            **{f"{name}-s{seed}": ([], {**sets, "train.seed": str(seed)}) for name, sets in LEVERS.items()
               for seed in seeds},
            **{f"{name}-f{k}": ([], {**sets, "split.fold": str(k)}) for name, sets in LEVERS.items()
               for k in range(folds)}}


def lever_run(name: str) -> Run | None:
    """The lever, training seed and fold an experiment name of the levers grid stands for, "committed" being the
    committed params; None for a name of no lever."""
    if name in LEVERS:  # a lever's own name wins over reading a seed or fold into it
        return Run(name, None, None)
    run = decode_run(name)
    return run if run.lever in LEVERS or run.lever == COMMITTED else None


def check_folds(folds: int, ap: argparse.ArgumentParser, params_file: Path = Path("params.yaml")) -> None:
    """--folds must be the params' split.folds: the split stage deals that many folds, and fold K of another
    count would be another val set."""
    from ultraseg.params import load

    expected = load(params_file).split.folds
    if folds != expected:
        ap.error(f"--folds {folds}: params.yaml sets split.folds: {expected}; pass --folds {expected} "
                 "or change split.folds")


def queue(todo: dict[str, tuple[list[str], dict[str, str]]], source: Path) -> None:
    for name, (target, sets) in todo.items():
        args = ["dvc", "exp", "run", "--queue", *target, "--name", name]
        for key, value in {"fetch.source": str(source), **sets}.items():
            args += ["-S", f"{key}={value}"]
        _run(args)


def run_queue(jobs: int) -> list[str]:
    """Start ``jobs`` workers and wait until the queue is empty; the names of the experiments that failed."""
    os.environ["PATH"] = absolute_search_path(os.environ.get("PATH", ""))
    _run(["dvc", "queue", "start", "--jobs", str(jobs)])
    while True:
        rows = _queue_status()
        if not any(state in ("Queued", "Running") for _, state in rows):
            return [name for name, state in rows if state == "Failed"]
        time.sleep(POLL_SECONDS)


def absolute_search_path(path: str) -> str:
    """``path`` (a PATH value) with relative entries made absolute: each experiment runs its stages in its own copy
    of the project, where a relative entry such as `.venv/bin` names no interpreter, and `python` would then be one
    without ultraseg installed."""
    return os.pathsep.join(entry if not entry or os.path.isabs(entry) else os.path.abspath(entry)
                           for entry in path.split(os.pathsep))


def _queue_status() -> list[tuple[str, str]]:
    """(name, state) of each queued, running, finished or failed experiment, from `dvc queue status`."""
    out = subprocess.run(["dvc", "queue", "status"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.split()
        states = [p for p in parts if p in ("Queued", "Running", "Success", "Failed")]
        if len(parts) >= 2 and states:
            rows.append((parts[1], states[0]))
    return rows


def _run(args: list[str]) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


# ---------------------------------------------------------------------------------------------------- collecting


def _rows() -> list[dict]:
    import dvc.api

    return list(dvc.api.exp_show(num=COMMITS))


def _short_sha(rev: str | None) -> str | None:
    """exp_show names HEAD by its branch; the report wants a commit."""
    if rev in (None, "workspace"):
        return None
    out = subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True)
    return out.stdout.strip() or rev


def _metric(exp: dict, path: str, key: str):
    """exp_show flattens metrics to their key, prefixed with the file where two files share a key; it reads
    integers back as floats; anything not a number (unfinished experiment) is None."""
    value = exp.get(f"{path}:{key}", exp.get(key))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # a running or failed experiment shows "!" or "-"
    return int(value) if key.split(".")[-1] in COUNTS else value


def collect_comparison(epochs: int) -> dict:
    rows, commits, baseline = {}, [], None
    # exp_show lists each commit, then the experiments derived from it; later commits come first, so the newest
    # run of an experiment wins
    for exp in _rows():
        name = exp.get("Experiment") or ""
        if not name:
            baseline = _short_sha(exp.get("rev"))
            continue
        base = name.removesuffix(f"-e{epochs}")
        if base not in COMPARISON or not name.endswith(f"-e{epochs}") or base in rows:
            continue
        commits += [baseline] if baseline not in commits else []
        rows[base] = {"experiment": name, "rev": exp.get("rev"), "derived_from": baseline, "changed": COMPARISON[base],
                      "filter": exp.get("preprocess.filter"), "model": exp.get("train.model.name"),
                      **{key: _metric(exp, path, key) for path, keys in METRICS.items() for key in keys}}
    missing = [name for name in COMPARISON if name not in rows or rows[name]["val_dice"] is None]
    rows = {name: rows[name] for name in COMPARISON if name not in missing}  # the grid's order
    if not rows:
        sys.exit(f"error: no finished experiment at {epochs} epochs; run them first (--run)")
    if missing:
        print(f"experiments: not finished at {epochs} epochs, left out: {', '.join(missing)}", file=sys.stderr)
    return {"derived_from_commit": ", ".join(c for c in commits if c), "epochs": epochs, "missing": missing,
            "command": f"python scripts/experiments.py --grid comparison --run --collect --epochs {epochs}",
            "experiments": rows}


def headline_of(exp: dict) -> dict[str, float] | None:
    """The metrics/headline.json numbers of one exp_show row; None when the run did not finish. A queued or
    running experiment's row shows the numbers of the commit it was derived from, so its state decides first."""
    if exp.get("State") not in (None, "Success"):
        return None
    # a key that other rows' headline files have and this one's has not is shown as absent ("None" or "-"); any
    # other cell that is not a number ("!") is a run that did not finish
    values = {key.removeprefix("headline."): value for key, value in exp.items()
              if key.startswith("headline.") and value not in ABSENT}
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values.values()):
        return None
    return values


def collect_seeds(seeds: list[int]) -> dict:
    """The committed run (the first commit row) and the newest finished run of each seed, with mean and sd."""
    rows = _rows()
    base = next(exp for exp in rows if not exp.get("Experiment") and exp.get("rev") != "workspace")
    seed = base.get("train.seed")  # exp_show reads integers back as floats
    runs = {f"committed (train.seed {seed if seed is None else format(seed, 'g')})": headline_of(base)}
    for seed in seeds:
        exp = next((e for e in rows if e.get("Experiment") == f"seed-{seed}" and headline_of(e)), None)
        runs[f"seed-{seed}"] = headline_of(exp) if exp else None
    missing = [name for name, values in runs.items() if values is None]
    done = {name: values for name, values in runs.items() if values is not None}
    if len(done) < 2:
        sys.exit(f"error: fewer than two finished runs ({', '.join(missing)} missing); run them first (--run)")
    keys = list(next(iter(done.values())))
    summary = {key: mean_sd([v[key] for v in done.values()]) for key in keys}
    return {"derived_from_commit": _short_sha(base.get("rev")), "runs": done, "missing": missing, "n": len(done),
            "summary": summary,
            "command": "python scripts/experiments.py --grid seeds --run --collect --seeds "
                       + " ".join(map(str, seeds))}


def _curve(rev: str | None, path: str) -> list[list[float]]:
    """The (step, value) rows of a dvclive TSV as the experiment's commit holds it."""
    out = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: {path} at {rev}: {out.stderr.strip()}")
    return [[float(cell) for cell in line.split("\t")[:2]] for line in out.stdout.splitlines()[1:] if line.strip()]


def collect_levers(previous: dict | None = None, seeds: list[int] | None = None, folds: int = 0) -> dict:
    """The levers run against each commit, with that commit's run: val numbers to choose by, test for the record.

    A lever is compared only with the run of the commit it was derived from, so each such commit gets its own
    comparison, newest first; those of other commits in ``previous`` (the file as it was) are kept after them.
    Levers run at several training seeds get their mean and sd (:func:`spreads`), those run on several
    cross-validation folds their cross-validation mean and sd (:func:`cv`)."""
    groups: list[tuple[dict, dict[str, dict]]] = []
    # exp_show lists each commit, then the experiments derived from it, newest first: the newest run of a lever wins
    for exp in _rows():
        name = exp.get("Experiment")
        if not name and exp.get("rev") != "workspace":
            groups.append((exp, {}))
        elif groups and name and lever_run(name) and name not in groups[-1][1] and headline_of(exp):
            groups[-1][1][name] = exp
    comparisons = [_comparison(base, levers) for base, levers in groups if levers]
    if not comparisons:
        sys.exit("error: no finished lever experiment; run them first (--run)")
    commits = {c["derived_from_commit"] for c in comparisons}
    comparisons += [c for c in (previous or {}).get("comparisons", []) if c["derived_from_commit"] not in commits]
    return {"command": "python scripts/experiments.py --grid levers --run --collect"
                       + (" --seeds " + " ".join(map(str, seeds)) if seeds else "")
                       + (f" --folds {folds}" if folds else ""),
            "comparisons": comparisons, "spreads": spreads(comparisons), "cv": cv(comparisons)}


def _comparison(base: dict, levers: dict[str, dict]) -> dict:
    runs = {}
    for name, exp in {COMMITTED: base, **levers}.items():
        lever, seed, fold = lever_run(name)
        runs[name] = {"changed": {**LEVERS.get(lever, {}), **({"train.seed": str(seed)} if seed else {}),
                                  **({"split.fold": str(fold)} if fold is not None else {})},
                      "val": {key: _metric(exp, path, key) for path, keys in VAL_METRICS.items() for key in keys},
                      "test_headline": headline_of(exp)}
        if name in LEVER_CURVES:
            runs[name]["curve"] = {"path": LEVER_CURVES[name], "points": _curve(exp.get("rev"), LEVER_CURVES[name])}
    return {"derived_from_commit": _short_sha(base.get("rev")), "missing": [n for n in LEVERS if n not in levers],
            "runs": runs}


def main(argv: list[str] | None = None) -> None:
    summary, _, details = __doc__.strip().partition("\n")
    ap = argparse.ArgumentParser(description=summary, epilog=details,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", choices=list(OUT), default="comparison", help="which grid (default: %(default)s)")
    ap.add_argument("--run", action="store_true", help="queue the grid's experiments and run the queue")
    ap.add_argument("--collect", action="store_true", help="write the grid's JSON from the finished experiments")
    ap.add_argument("--epochs", type=int, default=8, help="comparison: training epochs (default: %(default)s)")
    ap.add_argument("--seeds", type=int, nargs="+", help="training seeds besides the committed run's: the seeds "
                    "grid's (default: 43 44); the levers grid runs each lever and the committed params at them too "
                    "(default: none)")
    ap.add_argument("--folds", type=int, default=0, metavar="K",
                    help="levers: also run each lever and the committed params on each of K grouped "
                    "cross-validation folds of train + val; K must be the params' split.folds (default: none)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments of the grid (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="queue workers run at once (default: %(default)s)")
    ap.add_argument("--source", type=Path, default=Path("../shared/data/busi"), help="the BUSI data (fetch.source)")
    args = ap.parse_args(argv)
    if not (args.run or args.collect):
        ap.error("nothing to do: give --run, --collect or both")
    seeds = args.seeds or ([43, 44] if args.grid == "seeds" else [])
    if args.folds:
        check_folds(args.folds, ap)
    if args.run:
        todo = experiments(args.grid, args.epochs, seeds, args.folds)
        unknown = sorted(set(args.only or ()) - set(todo))
        if unknown:
            ap.error(f"--only: no experiment {unknown[0]!r} in the {args.grid} grid; it has {', '.join(todo)}")
        queue({name: todo[name] for name in args.only or todo}, args.source.resolve())
        failed = run_queue(args.jobs)
        if failed:
            print(f"experiments: failed: {', '.join(failed)} (see `dvc queue logs NAME`)", file=sys.stderr)
    if args.collect:
        out = OUT[args.grid]
        previous = read_json(out) if out.exists() else None
        collect = {"comparison": lambda: collect_comparison(args.epochs), "seeds": lambda: collect_seeds(seeds),
                   "levers": lambda: collect_levers(previous, seeds, args.folds)}[args.grid]
        write_json(out, collect())
        print(f"experiments: -> {out}")


if __name__ == "__main__":
    main()
