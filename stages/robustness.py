"""robustness: the teacher and the deployable files on the test split under simulated scanner shifts.

Reads models/onnx/teacher.onnx (at the threshold metrics/evaluate.json says the evaluate stage chose for it on val),
the two profiles' deployable files, models/deploy/ultraseg.int8.onnx (`deployed`, the edge profile) and
models/deploy/ultraseg.accurate.onnx (`accurate`), each with its own rule, data/raw and data/split.csv (test), and
`evaluate.seed` for the shifts' random draws, and `deploy.presence.sensitivity` (the teacher's image-level operating point, chosen on
unshifted val). Writes metrics/robustness.json (per model, shift and severity: lesion Dice, its drop from the
unshifted test split, the share of lesion images with no prediction, normal images left clean, image-level ROC AUC and
sensitivity and specificity at the operating point; the mean and worst drop per severity, the lowest AUC, sensitivity
and specificity; under "val", the deployed file's mean and worst drop and most missed lesions per severity on the val
split, by which training levers are chosen; under "stream", each model's decision flips per 100 frames, the frames a
true change takes to show and the share of frames decided right on a simulated live scan, frame by frame and with the
deployable file's stream smoothing; under "ood", the share of a built set of frames that are not breast ultrasound
(photographs, blank, gradient, noise and text screens) and of the split's scans that the deployable file flags out of
distribution) and plots/robustness/dice_drop.png.
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import robustness
from ultraseg.pipeline.stage import fail_cleanly, parse, parser
from ultraseg.runtime.model_files import onnx_file, profile_file


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--evaluate", type=Path, default=Path("metrics/evaluate.json"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--split", type=Path, default=Path("data/split.csv"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/robustness.json"))
    ap.add_argument("--figure", type=Path, default=Path("plots/robustness/dice_drop.png"))
    ap.add_argument("--on", choices=("test", "val"), default="test",
                    help="split to shift (default: test, with the deployed file's val summary as well)")
    args, params = parse(ap, argv)
    if not args.evaluate.exists():
        raise FileNotFoundError(f"{args.evaluate}: missing; run the evaluate stage first (dvc repro evaluate)")
    threshold = io.read_json(args.evaluate)["variants"]["teacher_onnx"]["threshold"]
    models = robustness.load_models(args.models / onnx_file("teacher"), threshold, profile_file("edge", args.models),
                                    profile_file("accurate", args.models))
    points = robustness.operating_points(models, args.raw, args.split, params.deploy.presence.sensitivity)
    summary = robustness.run(models, args.raw, args.split, params.evaluate.seed, args.on, points)
    if args.on == "test":  # the deployed file on shifted val too: what training levers are chosen by
        summary["val"] = robustness.val_summary(models["deployed"], args.raw, args.split, params.evaluate.seed)
    summary["stream"] = robustness.stream_summary(models, args.raw, args.split, params.evaluate.seed, args.on)
    summary["ood"] = robustness.ood_summary(models["deployed"], args.raw, args.split, params.evaluate.seed, args.on)
    robustness.figure(summary, args.figure)
    io.write_json(args.metrics, summary)
    moderate = {name: m["by_severity"]["moderate"]["mean_drop"] for name, m in summary["models"].items()}
    ood = summary["ood"]
    print(f"robustness: mean Dice drop at moderate severity {moderate}; out of distribution: built set "
          f"{ood['built']['flagged']}, {args.on} scans {ood['scans']['flagged']} -> {args.metrics}")


if __name__ == "__main__":
    main()
