"""preprocess: speckle filter, CLAHE and resize every image; measure what the filter does.

Reads the `preprocess` params section and data/raw. Writes data/preprocessed/{images.npy,masks.npy,index.csv},
metrics/preprocess.json (time, and every filter's speckle suppression and edge preservation on a fixed sample
of train-split lesion images, so choosing a filter never looks at test masks)
and plots/preprocess/filters.png (one image through every filter).
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import preprocess
from ultraseg.pipeline.stage import fail_cleanly, parse, parser


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--split", type=Path, default=Path("data/split.csv"))
    ap.add_argument("--out", type=Path, default=Path("data/preprocessed"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/preprocess.json"))
    ap.add_argument("--figure", type=Path, default=Path("plots/preprocess/filters.png"))
    args, params = parse(ap, argv)
    cfg = params.preprocess
    timing = preprocess.run(args.raw, args.out, cfg)
    train_ids = set(io.split_ids(args.split, "train"))
    sample = preprocess.quality_sample(args.raw, cfg.quality_sample, train_ids)
    table = preprocess.compare_filters(sample, cfg)
    chosen = {k: table[cfg.filter][k] for k in ("enl_ratio", "edge_preservation")}
    io.write_json(args.metrics, {**timing, **chosen, "quality_sample": len(sample), "filters": table})
    image_id, image, _ = sample[len(sample) // 2]
    preprocess.filter_figure(image, cfg, args.figure, f"{image_id}: every filter (before CLAHE)")
    print(f"preprocess: {timing['images']} images with {cfg.filter} in {timing['seconds']} s -> {args.out}")


if __name__ == "__main__":
    main()
