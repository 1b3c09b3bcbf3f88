"""train: fit the teacher U-Net on the train split, select the epoch with the best val Dice.

Reads the `train` params section (and `preprocess` for the checkpoint's metadata), data/preprocessed and
data/split.csv. Writes models/teacher.pt (weights + everything needed to rebuild and use them),
metrics/train.json and dvclive learning curves in dvclive/train. An interrupted run resumes from
models/.resume/train.pt when started again with the same params and data. With train.distributed asking for
several processes it starts itself again under torchrun (DDP); rank 0 writes the outputs. With train.members above 1
it trains that many teachers at consecutive seeds and saves their ensemble (the mean of their logits) as the teacher;
metrics/train.json then scores the ensemble and lists each member's own val figures.
"""

from pathlib import Path

from ultraseg import distributed, io
from ultraseg.pipeline import train
from ultraseg.pipeline.stage import fail_cleanly, parse, parser


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--data", type=Path, default=Path("data/preprocessed"))
    ap.add_argument("--split", type=Path, default=Path("data/split.csv"))
    ap.add_argument("--out", type=Path, default=Path("models/teacher.pt"))
    ap.add_argument("--live", type=Path, default=Path("dvclive/train"))
    ap.add_argument("--resume", type=Path, default=Path("models/.resume/train.pt"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/train.json"))
    args, params = parse(ap, argv)
    summary = distributed.run_stage(__file__, argv, params.train, lambda: train.run(
        params, args.data, args.split, args.out, args.live, args.resume))
    if summary is None:  # a launcher, or a rank other than 0
        return
    io.write_json(args.metrics, summary)
    if "members" in summary:
        each = ", ".join(str(m["val_dice"]) for m in summary["members"])
        print(f"train: ensemble of {len(summary['members'])} teachers, val Dice {summary['val_dice']} "
              f"(members {each}) in {summary['train_minutes']} min -> {args.out}")
    else:
        print(f"train: best val Dice {summary['val_dice']} at epoch {summary['best_epoch']} "
              f"in {summary['train_minutes']} min -> {args.out}")


if __name__ == "__main__":
    main()
