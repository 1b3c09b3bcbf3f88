"""Compare speckle filters and architectures with `dvc exp run`, at one reduced training budget, for REPORT.md.

Each experiment reruns the pipeline up to the train stage (`dvc exp run train --temp`) with one change from the
committed params and the same number of epochs; the teacher's val metrics and the filter's speckle/edge scores come
from the files those stages wrote (metrics/train.json, metrics/preprocess.json). `--collect` gathers them with
`dvc.api.exp_show` into experiments/comparison.json (committed; the report stage renders it), with the commit the
experiments were derived from.

  python scripts/experiments.py --run --collect            # the whole grid: about 6 teacher trainings
  python scripts/experiments.py --run --only filter-lee    # one of them
  dvc exp show --only-changed                              # the same experiments, interactively
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ultraseg.io import write_json

GRID: dict[str, dict[str, str]] = {
    "filter-none": {"preprocess.filter": "none"},
    "filter-lee": {"preprocess.filter": "lee"},
    "filter-frost": {"preprocess.filter": "frost"},
    "filter-srad": {"preprocess.filter": "srad"},
    "arch-attention_unet": {"train.model.name": "attention_unet"},
    "arch-res_unet": {"train.model.name": "res_unet"},
}
METRICS = {"metrics/train.json": ("val_dice", "val_iou", "val_normal_clean", "best_epoch", "epochs_run",
                                    "train_minutes", "params", "gmacs"),
           "metrics/preprocess.json": ("enl_ratio", "edge_preservation")}
OUT = Path("experiments/comparison.json")
COMMITS = 20
"""How many commits back to look for experiments: the grid takes long enough that commits land meanwhile."""


def run(names: list[str], epochs: int, source: Path) -> None:
    for name in names:
        sets = {"train.epochs": str(epochs), "fetch.source": str(source), **GRID[name]}
        # --temp runs in a copy under .dvc/tmp/exps, where the relative default fetch.source does not resolve
        args = ["dvc", "exp", "run", "train", "--temp", "--name", f"{name}-e{epochs}"]
        args += [arg for key, value in sets.items() for arg in ("-S", f"{key}={value}")]
        print("+", " ".join(args), flush=True)
        subprocess.run(args, check=True)


def collect(epochs: int) -> dict:
    import dvc.api

    rows, commits, baseline = {}, [], None
    # exp_show lists each commit, then the experiments derived from it; later commits come first, so the newest
    # run of an experiment wins
    for exp in dvc.api.exp_show(num=COMMITS):
        name = exp.get("Experiment") or ""
        if not name:
            baseline = _short_sha(exp.get("rev"))
            continue
        base = name.removesuffix(f"-e{epochs}")
        if base not in GRID or not name.endswith(f"-e{epochs}") or base in rows:
            continue
        commits += [baseline] if baseline not in commits else []
        rows[base] = {"experiment": name, "rev": exp.get("rev"), "derived_from": baseline, "changed": GRID[base],
                      "filter": exp.get("preprocess.filter"), "model": exp.get("train.model.name"),
                      **{key: _metric(exp, path, key) for path, keys in METRICS.items() for key in keys}}
    missing = [name for name in GRID if name not in rows or rows[name]["val_dice"] is None]
    rows = {name: rows[name] for name in GRID if name not in missing}  # the grid's order
    if not rows:
        sys.exit(f"error: no finished experiment at {epochs} epochs; run them first (--run)")
    if missing:
        print(f"experiments: not finished at {epochs} epochs, left out: {', '.join(missing)}", file=sys.stderr)
    return {"derived_from_commit": ", ".join(c for c in commits if c), "epochs": epochs, "missing": missing,
            "command": f"python scripts/experiments.py --run --collect --epochs {epochs}", "experiments": rows}


def _short_sha(rev: str | None) -> str | None:
    """exp_show names HEAD by its branch; the report wants a commit."""
    if rev in (None, "workspace"):
        return None
    out = subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True)
    return out.stdout.strip() or rev


COUNTS = ("params", "best_epoch", "epochs_run")


def _metric(exp: dict, path: str, key: str):
    """exp_show flattens metrics to their key, prefixed with the file where two files share a key; it reads
    integers back as floats; anything not a number (unfinished experiment) is None."""
    value = exp.get(f"{path}:{key}", exp.get(key))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None  # a running or failed experiment shows "!" or "-"
    return int(value) if key in COUNTS else value


def main(argv: list[str] | None = None) -> None:
    summary, _, details = __doc__.strip().partition("\n")
    ap = argparse.ArgumentParser(description=summary, epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true", help="run the experiments (sequentially, in temp copies)")
    ap.add_argument("--collect", action="store_true", help=f"write {OUT} from the finished experiments")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of every experiment (default: 10)")
    ap.add_argument("--only", nargs="+", choices=list(GRID), default=list(GRID), help="experiments to run")
    ap.add_argument("--source", type=Path, default=Path("../shared/data/busi"), help="the BUSI data (fetch.source)")
    args = ap.parse_args(argv)
    if not (args.run or args.collect):
        ap.error("nothing to do: give --run, --collect or both")
    if args.run:
        run(args.only, args.epochs, args.source.resolve())
    if args.collect:
        write_json(OUT, collect(args.epochs))
        print(f"experiments: -> {OUT}")


if __name__ == "__main__":
    main()
