"""prune_finetune: channel-prune the distilled student (Torch-Pruning) with distillation fine-tuning between steps.

Reads the `prune` params section (ratio, steps, importance, fine-tuning epochs and lr), `distill` and `train` for
the fine-tuning loss and settings, models/teacher.pt and models/student.pt. Writes models/pruned.pt (reloadable
without code: widths come from the weights), metrics/prune.json (params, MACs, size and val Dice before/after)
and dvclive curves in dvclive/prune. Fine-tunes on several processes (DDP) as train.distributed says.
"""

from pathlib import Path

from ultraseg import distributed, io
from ultraseg.pipeline import prune_finetune
from ultraseg.pipeline.stage import fail_cleanly, parse, parser


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--data", type=Path, default=Path("data/preprocessed"))
    ap.add_argument("--split", type=Path, default=Path("data/split.csv"))
    ap.add_argument("--teacher", type=Path, default=Path("models/teacher.pt"))
    ap.add_argument("--student", type=Path, default=Path("models/student.pt"))
    ap.add_argument("--out", type=Path, default=Path("models/pruned.pt"))
    ap.add_argument("--live", type=Path, default=Path("dvclive/prune"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/prune.json"))
    args, params = parse(ap, argv)
    summary = distributed.run_stage(__file__, argv, params.train, lambda: prune_finetune.run(
        params, args.data, args.split, args.teacher, args.student, args.out, args.live))
    if summary is None:  # a launcher, or a rank other than 0
        return
    io.write_json(args.metrics, summary)
    print(f"prune-finetune: MACs x{summary['macs_ratio']}, params x{summary['params_ratio']}, "
          f"val Dice {summary['val_dice_before']} -> {summary['val_dice_after']} -> {args.out}")


if __name__ == "__main__":
    main()
