"""export: ONNX files of the teacher, the student and the pruned student, each checked against PyTorch.

Reads the `export` params section (opset, exporter, parity size and tolerances) and models/*.pt. Writes
models/onnx/{teacher,student,pruned}.onnx (input `input`, output `logits`, dynamic batch/height/width, metadata
carrying the preprocessing params, size, threshold, model config and params hash) and metrics/export.json. Fails
if a file's output differs from its model's on an input of another size than the training size.
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import export
from ultraseg.pipeline.stage import fail_cleanly, parse, parser


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=Path("models/onnx"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/export.json"))
    args, params = parse(ap, argv)
    with io.atomic_path(args.out) as tmp:
        tmp.mkdir()
        summary = export.export_all(params, args.models, tmp)
    io.write_json(args.metrics, summary)


if __name__ == "__main__":
    main()
