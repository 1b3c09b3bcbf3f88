"""split: group near-duplicate scans and split whole groups into train/val/test, stratified by class.

Reads the `split` params section and data/raw. Writes data/split.csv (id,class,split,group,group_size,conflict),
data/duplicates.csv (every duplicate link with its evidence) and metrics/split.json (counts per class per split,
duplicate groups found).
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import split
from ultraseg.pipeline.stage import fail_cleanly, parse, parser


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--out", type=Path, default=Path("data/split.csv"))
    ap.add_argument("--links", type=Path, default=Path("data/duplicates.csv"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/split.json"))
    args, params = parse(ap, argv)
    rows, links, metrics = split.run(args.raw, params.split)
    io.write_csv(args.out, rows, split.SPLIT_COLUMNS)
    io.write_csv(args.links, links, split.LINK_COLUMNS)
    io.write_json(args.metrics, metrics)
    counts = {s: metrics["counts"][s]["total"] for s in split.SPLITS}
    print(f"split: {metrics['duplicate_groups']} duplicate groups; {counts} -> {args.out}")


if __name__ == "__main__":
    main()
