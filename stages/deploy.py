"""deploy: choose the int8 model's threshold and post-processing on val, and write the deployable file.

Reads the `deploy` params section (the grid of rules and the Dice tolerance), models/pruned.int8.onnx, data/raw and
data/split.csv (val; train for the out-of-distribution check). Writes models/deploy/ultraseg.int8.onnx (the int8
model with the chosen rule and the out-of-distribution check in its metadata: everything a user needs) and
metrics/deploy.json (the rule, whether the model is averaged over a left-right flip, val lesion Dice and
normal_clean with the rule and with the best threshold alone, with and without the flip, under "presence" the
temperature and operating point of the image-level answer with its val AUC, sensitivity and specificity (null for a
network without a presence output), and under "ood" the check's threshold and the share of val scans it lets
through).
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import deploy
from ultraseg.pipeline.stage import fail_cleanly, parse, parser
from ultraseg.runtime.model_files import DEPLOY_FILE


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--model", type=Path, default=Path("models/pruned.int8.onnx"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--split", type=Path, default=Path("data/split.csv"))
    ap.add_argument("--out", type=Path, default=Path("models") / DEPLOY_FILE)
    ap.add_argument("--metrics", type=Path, default=Path("metrics/deploy.json"))
    args, params = parse(ap, argv)
    summary = deploy.run(params, args.model, args.raw, args.split, args.out)
    io.write_json(args.metrics, summary)
    chosen, plain = summary["val_chosen"], summary["val_threshold_only"]
    answer = summary["presence"]
    if answer:
        print(f"deploy: presence T={answer['temperature']:.3g}, operating point {answer['threshold']:.3g}; val AUC "
              f"{answer['val_auc']}, sensitivity {answer['val_sensitivity']}, specificity {answer['val_specificity']}")
    print(f"deploy: {summary['postprocess']}; val Dice {plain['dice']} -> {chosen['dice']}, normal clean "
          f"{plain['normal_clean']} -> {chosen['normal_clean']}; val scans in distribution {summary['ood']['val_pass']} "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
