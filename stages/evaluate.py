"""evaluate: every model variant scored on the held-out test split, at each image's original resolution.

Reads the `evaluate` params section (threshold: `val` or fixed, bootstrap), `deploy.presence.sensitivity` (the
image-level operating point's target on val), models/ (PyTorch checkpoints, ONNX fp32 and int8 files, and the
deployable files, scored through the runtime with their own threshold and post-processing: the edge profile's
models/deploy/ultraseg.int8.onnx as `deployed`, the accurate profile's models/deploy/ultraseg.accurate.onnx as
`accurate`), data/preprocessed (network inputs), data/raw (original-resolution masks) and data/split.csv. Writes
metrics/evaluate.json (per variant: threshold, lesion-mean Dice with bootstrap 95% CI, IoU, precision, recall, HD95,
pooled Dice, per-class Dice, normal images predicted clean, and under image_level the image-level answer: ROC AUC with
bootstrap CI, sensitivity and specificity at the val-chosen point with Wilson CIs, calibration error),
results/evaluate/cases.csv (one row per variant and test image, with its image-level score and answer) and
plots/evaluate/ (the test ROC curve of each variant in roc/<variant>.csv and roc.png, Dice distribution, Dice against
lesion size, val threshold curves, the best/median/worst lesion cases and two normal images, the deployable file
beside the teacher).
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import evaluate
from ultraseg.pipeline.stage import fail_cleanly, parse, parser
from ultraseg.runtime.model_files import DEPLOYED, INT8_VARIANT, profile_file


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--data", type=Path, default=Path("data/preprocessed"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--split", type=Path, default=Path("data/split.csv"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/evaluate.json"))
    ap.add_argument("--cases", type=Path, default=Path("results/evaluate/cases.csv"))
    ap.add_argument("--plots", type=Path, default=Path("plots/evaluate"))
    args, params = parse(ap, argv)
    summary, rows, curves, samples = evaluate.run(params, args.models, args.data, args.raw, args.split,
                                                  deployable=profile_file("edge", args.models),
                                                  accurate=profile_file("accurate", args.models))
    io.write_csv(args.cases, rows, evaluate.CASE_COLUMNS)
    io.write_csv(args.plots / "threshold_curve.csv", evaluate.curve_rows(curves), ["threshold", *curves])
    roc = evaluate.roc_rows(rows)
    for name, points in roc.items():
        io.write_csv(args.plots / evaluate.ROC_DIR / f"{name}.csv", points, ["fpr", "tpr", "threshold"])
    evaluate.roc_figure(roc, summary["variants"], args.plots / "roc.png")
    evaluate.dice_figure(rows, args.plots / "dice_distribution.png")
    evaluate.size_figure(rows, ["teacher", DEPLOYED], args.plots / "dice_vs_size.png")
    chosen = {name: v["threshold"] for name, v in summary["variants"].items()}
    evaluate.threshold_figure(curves, chosen, args.plots / "threshold_curve.png")
    evaluate.sample_figure(samples["split"], samples["preds"], samples["rows"],
                           "test split: the deployable file, the teacher and the int8 model before post-processing",
                           args.plots / "samples.png")
    io.write_json(args.metrics, summary)
    int8 = summary["variants"][INT8_VARIANT]
    print(f"evaluate: {INT8_VARIANT} test Dice {int8['dice']:.4f}, teacher {summary['variants']['teacher']['dice']:.4f}"
          f" -> {args.metrics}")


if __name__ == "__main__":
    main()
