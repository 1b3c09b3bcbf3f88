"""fetch: read BUSI (mirror directory, original archive, .zip or URL) and any extra labelled sources into data/raw.

Reads params `fetch.source`, `fetch.sha256` and `fetch.extra_sources` (each `[name=]path`: images/ + masks/, a CSV
of image,mask[,class,group,pixel_spacing_mm], or BUSI's layout). Writes data/raw/{images,masks}/<id>.png and
data/raw/manifest.csv (id,class,file,width,height,mask_files,sha256,source,group); an extra source's ids are
<name>/<id>. Downloads are cached in data/downloads.
"""

from pathlib import Path

from ultraseg.pipeline import fetch
from ultraseg.pipeline.stage import fail_cleanly, parse, parser


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--out", type=Path, default=Path("data/raw"))
    ap.add_argument("--cache", type=Path, default=Path("data/downloads"))
    args, params = parse(ap, argv)
    rows = fetch.run(params.fetch, args.out, args.cache)
    sources = ", ".join([params.fetch.source, *params.fetch.extra_sources])
    print(f"fetch: {len(rows)} images from {sources} -> {args.out}")


if __name__ == "__main__":
    main()
