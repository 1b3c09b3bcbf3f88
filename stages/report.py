"""report: regenerate REPORT.md from the metrics files (fails if one is missing).

Reads metrics/*.json, params.yaml and, where it exists, experiments/comparison.json (scripts/experiments.py).
Writes REPORT.md.
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import report
from ultraseg.cli import fail_cleanly, parse, parser


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--metrics", type=Path, default=Path("metrics"))
    ap.add_argument("--out", type=Path, default=Path("REPORT.md"))
    ap.add_argument("--experiments", type=Path, default=Path("experiments/comparison.json"),
                    help="the filter/architecture comparison (scripts/experiments.py); optional")
    args, params = parse(ap, argv)
    try:
        io.write_text(args.out, report.render(args.metrics, params, Path(args.params), args.experiments))
    except report.ReportError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"report: -> {args.out}")


if __name__ == "__main__":
    main()
