"""quantize: ONNX Runtime static int8 quantization (QDQ) of the deployable (pruned) model.

Reads the `quantize` params section (calibration count and method, per-channel, format, exclusions),
models/onnx/pruned.onnx, the train split for calibration and the val split for scoring. Writes
models/pruned.int8.onnx and metrics/quantize.json: sizes, val Dice fp32 vs int8, calibration time, the ops that
stay float, and batch-1 latency (1 thread) of the int8 model against the fp32 one and the teacher, in one run.
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import quantize
from ultraseg.pipeline.stage import fail_cleanly, parse, parser


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--onnx", type=Path, default=Path("models/onnx"))
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--data", type=Path, default=Path("data/preprocessed"))
    ap.add_argument("--split", type=Path, default=Path("data/split.csv"))
    ap.add_argument("--out", type=Path, default=Path("models/pruned.int8.onnx"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/quantize.json"))
    args, params = parse(ap, argv)
    summary = quantize.quantize_deployable(params, args.onnx, args.models, args.data, args.split, args.out)
    io.write_json(args.metrics, summary)
    print(f"quantize: val Dice fp32 {summary['val_dice_fp32']} int8 {summary['val_dice_int8']}; int8 "
          f"x{summary['speedup_int8_vs_fp32']} vs fp32, x{summary['speedup_int8_vs_teacher_eager']} vs teacher eager")


if __name__ == "__main__":
    main()
