"""Refit the out-of-distribution check of a deployable file on the real train/val split and measure it: the deploy
stage's own fit (:func:`ultraseg.pipeline.deploy.fit_ood`) on a copy of the file, then the robustness stage's own
measures (:func:`ultraseg.pipeline.robustness.ood_summary` and, per scanner shift and severity, the share of the
split's scans flagged). Writes the summary as JSON and prints it; the source file is only read (a file without the
``features`` output gets it in the copy).

    python scripts/ood_fit.py --model models/deploy/ultraseg.int8.onnx --raw data/raw --split data/split.csv \\
        --out /tmp/ood/ultraseg.int8.onnx --report /tmp/ood/report.json [--split-name val] [--no-shifts]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ultraseg import ood, params as params_mod, shifts
from ultraseg.data.busi import load_raw
from ultraseg.io import split_ids, write_json
from ultraseg.pipeline import deploy, robustness
from ultraseg.runtime.segmenter import Segmenter


def shifted_flags(segmenter: Segmenter, raw_dir: Path, split_csv: Path, seed: int, split: str) -> dict:
    """Share of ``split``'s scans flagged under each shift at each severity (drawn as the robustness stage draws)."""
    raw = [load_raw(raw_dir, i) for i in split_ids(split_csv, split)]
    out = {}
    for shift in shifts.SHIFTS:
        out[shift.name] = {level: round(float(np.mean([
            not segmenter.segment(shifts.apply(shift, level, image, mask, seed, k)[0]).in_distribution
            for k, (image, mask) in enumerate(raw)])), 4) for level in shifts.SEVERITIES}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--raw", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="the refitted copy (never the source file)")
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--split-name", default="test", help="the split whose scans are measured (default: test)")
    ap.add_argument("--no-shifts", action="store_true", help="skip the per-shift shares")
    args = ap.parse_args(argv)
    if args.out.resolve() == args.model.resolve():
        ap.error("--out must differ from --model")
    params = params_mod.load(args.params)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ood.write_with_features(args.model, args.out)
    val = [load_raw(args.raw, i)[0] for i in split_ids(args.split, "val")]
    report = {"fit": deploy.fit_ood(params, args.out, args.raw, args.split, val)}
    segmenter = Segmenter(args.out)
    seed = params.evaluate.seed  # as the robustness stage draws its shifts and its built set
    report |= robustness.ood_summary(segmenter, args.raw, args.split, seed, args.split_name)
    if not args.no_shifts:
        report["shifted"] = {"split": args.split_name,
                             "flagged": shifted_flags(segmenter, args.raw, args.split, seed, args.split_name)}
    write_json(args.report, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
