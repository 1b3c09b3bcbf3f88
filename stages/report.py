"""report: regenerate REPORT.md from the metrics files (fails if one is missing).

Reads metrics/*.json, dvclive/ (the learning curves, drawn into plots/report/learning_curves.png), params.yaml
and, where they exist, experiments/comparison.json, seeds.json and levers.json (scripts/experiments.py; the
no-distillation lever's student curve joins the figure when this run did not train that student itself).
Writes REPORT.md and metrics/headline.json, the numbers an experiment is judged by (teacher and deployed test Dice
and their gap, normal images left clean, missed lesions, the deployed file's image-level AUC and specificity, the
shift suite's mean drop, end-to-end ms, file size), for `dvc exp show` and `dvc metrics diff` (README,
*Experiments*), and beside them the deployed file's and the teacher's image-level AUC, sensitivity and specificity
with their 95% CIs.
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import report
from ultraseg.pipeline.stage import fail_cleanly, parse, parser


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--metrics", type=Path, default=Path("metrics"))
    ap.add_argument("--out", type=Path, default=Path("REPORT.md"))
    ap.add_argument("--headline", type=Path, default=Path("metrics/headline.json"))
    ap.add_argument("--dvclive", type=Path, default=Path("dvclive"))
    ap.add_argument("--figure", type=Path, default=Path("plots/report/learning_curves.png"))
    ap.add_argument("--experiments", type=Path, default=Path("experiments/comparison.json"),
                    help="the filter/architecture comparison (scripts/experiments.py); optional")
    args, params = parse(ap, argv)
    try:
        text, headline = report.build(args.metrics, params, Path(args.params), args.experiments, args.dvclive,
                                      args.figure)
    except report.ReportError as err:
        raise SystemExit(f"error: {err}") from None
    io.write_json(args.headline, headline)
    io.write_text(args.out, text)
    print(f"report: -> {args.out}")


if __name__ == "__main__":
    main()
