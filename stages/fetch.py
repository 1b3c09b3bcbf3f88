"""fetch: read BUSI (mirror directory, original archive, .zip or URL) into data/raw with a manifest.

Reads params `fetch.source` and `fetch.sha256`. Writes data/raw/{images,masks}/<id>.png and
data/raw/manifest.csv (id,class,file,width,height,mask_files,sha256). Downloads are cached in data/downloads.
"""

from pathlib import Path

from ultraseg.cli import fail_cleanly, parse, parser
from ultraseg.pipeline import fetch


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/raw"))
    ap.add_argument("--cache", type=Path, default=Path("data/downloads"))
    args, params = parse(ap, argv)
    rows = fetch.run(params.fetch, args.out, args.cache)
    print(f"fetch: {len(rows)} images from {params.fetch.source} -> {args.out}")


if __name__ == "__main__":
    main()
