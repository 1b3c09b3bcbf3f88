"""external: the deployable file scored on your own labelled folders, as `ultraseg evaluate-folder` scores one.

Reads `evaluate.external` (folders or CSVs; see ultraseg.data.labelled for the layouts; give absolute paths, as
`dvc exp run --temp` runs in a copy of the project) and `evaluate.bootstrap` / `evaluate.seed`, and
models/deploy/ultraseg.int8.onnx. Writes metrics/external.json (per folder: Dice with its 95% CI, IoU, precision,
recall, HD95, missed lesions, false alarms, sensitivity and specificity) and results/external/ (datasets.csv, and per
folder cases.csv, summary.json and cases.png). With no folder listed it writes an empty set. DVC tracks the list of
folders, not their contents: after changing a folder's files, run `dvc repro -f external`.

  dvc exp run -S 'evaluate.external=[/data/siteA, /data/siteB/labels.csv]'
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import external
from ultraseg.pipeline.stage import fail_cleanly, parse, parser
from ultraseg.runtime.model_files import DEPLOY_FILE


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=Path("results/external"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/external.json"))
    args, params = parse(ap, argv)
    p = params.evaluate
    summary = external.run(p.external, args.models / DEPLOY_FILE, args.out, p.bootstrap, p.seed)
    io.write_json(args.metrics, summary)
    scores = {name: round(s["dice"], 4) for name, s in summary["datasets"].items()}
    print(f"external: lesion Dice {scores or 'no folder listed (evaluate.external)'} -> {args.metrics}")


if __name__ == "__main__":
    main()
