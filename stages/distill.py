"""distill: train the small student with knowledge distillation from the frozen teacher.

Reads the `distill` params section (model, epochs, lr, temperature, weights), `train` for the shared settings,
models/teacher.pt, data/preprocessed and data/split.csv. Writes models/student.pt, metrics/distill.json (student
val Dice with distillation and, with `distill.baseline`, without it on the same budget) and dvclive curves in
dvclive/distill (and, not a declared output, dvclive/distill_baseline). Runs on several processes (DDP) as train.distributed says.
"""

from pathlib import Path

from ultraseg import distributed, io
from ultraseg.pipeline import distill
from ultraseg.pipeline.stage import fail_cleanly, parse, parser


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--data", type=Path, default=Path("data/preprocessed"))
    ap.add_argument("--split", type=Path, default=Path("data/split.csv"))
    ap.add_argument("--teacher", type=Path, default=Path("models/teacher.pt"))
    ap.add_argument("--out", type=Path, default=Path("models/student.pt"))
    ap.add_argument("--live", type=Path, default=Path("dvclive/distill"))
    ap.add_argument("--baseline-live", type=Path, default=Path("dvclive/distill_baseline"))
    ap.add_argument("--resume", type=Path, default=Path("models/.resume/distill"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/distill.json"))
    args, params = parse(ap, argv)
    summary = distributed.run_stage(__file__, argv, params.train, lambda: distill.run(
        params, args.data, args.split, args.teacher, args.out, args.live, args.baseline_live, args.resume))
    if summary is None:  # a launcher, or a rank other than 0
        return
    io.write_json(args.metrics, summary)
    gain = summary.get("kd_gain_val_dice")
    print(f"distill: student val Dice {summary['student']['val_dice']}"
          + (f" ({gain:+.4f} from distillation)" if gain is not None else "") + f" -> {args.out}")


if __name__ == "__main__":
    main()
