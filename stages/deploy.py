"""deploy: choose a profile's threshold and post-processing on val, and write its deployable file.

Reads the `deploy` params section (the grid of rules and the Dice tolerance), the profile's model, data/raw and
data/split.csv (val; train for the out-of-distribution check). --profile edge (the default) deploys the int8 model
models/pruned.int8.onnx to models/deploy/ultraseg.int8.onnx with metrics/deploy.json; --profile accurate deploys the
fp32 teacher models/onnx/teacher.onnx to models/deploy/ultraseg.accurate.onnx with metrics/deploy_accurate.json.
The deployable file is the model with the chosen rule and the out-of-distribution check in its metadata: everything a
user needs. The metrics hold the rule, whether the model is averaged over a left-right flip, val lesion Dice and
normal_clean with the rule and with the best threshold alone, with and without the flip, under "presence" the
temperature and operating point of the image-level answer with its val AUC, sensitivity and specificity (null for a
network without a presence output), and under "ood" the check's threshold and the share of val scans it lets
through).
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import deploy
from ultraseg.pipeline.stage import fail_cleanly, parse, parser
from ultraseg.runtime.model_files import DEFAULT_PROFILE, PROFILE_SOURCES, PROFILES

METRICS = {"edge": Path("metrics/deploy.json"), "accurate": Path("metrics/deploy_accurate.json")}


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE,
                    help="which deployable file to make (default: %(default)s); sets the defaults of the paths below")
    ap.add_argument("--model", type=Path, help="model to deploy (default: the profile's)")
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--split", type=Path, default=Path("data/split.csv"))
    ap.add_argument("--out", type=Path, help="deployable file (default: the profile's)")
    ap.add_argument("--metrics", type=Path, help="summary (default: the profile's)")
    args, params = parse(ap, argv)
    models = Path("models")
    args.model = args.model or models / PROFILE_SOURCES[args.profile]
    args.out = args.out or models / PROFILES[args.profile]
    args.metrics = args.metrics or METRICS[args.profile]
    summary = deploy.run(params, args.model, args.raw, args.split, args.out)
    io.write_json(args.metrics, summary)
    chosen, plain = summary["val_chosen"], summary["val_threshold_only"]
    answer, name = summary["presence"], f"deploy ({args.profile})"
    if answer:
        print(f"{name}: presence T={answer['temperature']:.3g}, operating point {answer['threshold']:.3g}; val AUC "
              f"{answer['val_auc']}, sensitivity {answer['val_sensitivity']}, specificity {answer['val_specificity']}")
    print(f"{name}: {summary['postprocess']}; val Dice {plain['dice']} -> {chosen['dice']}, normal clean "
          f"{plain['normal_clean']} -> {chosen['normal_clean']}; val scans in distribution {summary['ood']['val_pass']} "
          f"-> {args.out}")

if __name__ == "__main__":
    main()
