"""benchmark: parameters, MACs, file size, latency, throughput and peak memory of every model variant on this CPU.

Reads the `benchmark` params section (input size, thread counts, repeats, disturbance limit, memory goal), the
training batch, networks and loss (`train`, `distill.student`), models/ (both profiles' deployable files too),
metrics/evaluate.json (test Dice for the trade-off plot) and one test scan from data/raw (for timing only). Writes
metrics/benchmark.json (environment, settings, per variant and thread count p50/p95 batch-1 latency, batch
throughput, peak RSS, the disturbance seen; speed-ups over the teacher; each profile's deployable file end to end
(`end_to_end` the edge profile's, `end_to_end_accurate` the accurate one's) on the real scan and on a 640 x 480 frame
through the torch-free runtime, with the peak memory of that process, which holds the runtime alone; the seed-size U-Net in PyTorch eager; training steps of the teacher and the student in fp32 and,
where the CPU has native bf16, bf16) and plots/benchmark/ (Dice-vs-latency trade-off as PNG and CSV, size and
latency bars as PNG).
Each variant runs in a fresh process; compare variants within one run, never across runs.
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import benchmark
from ultraseg.pipeline.stage import fail_cleanly, parse, parser
from ultraseg.runtime.model_files import INT8_VARIANT


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--evaluate", type=Path, default=Path("metrics/evaluate.json"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/benchmark.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/benchmark"))
    ap.add_argument("--raw", type=Path, default=Path("data/raw"))
    ap.add_argument("--split", type=Path, default=Path("data/split.csv"))
    args, params = parse(ap, argv)
    if not args.evaluate.exists():
        raise FileNotFoundError(f"{args.evaluate}: missing; run the evaluate stage first (dvc repro evaluate)")
    scores = io.read_json(args.evaluate)
    summary = benchmark.run(params, args.models, frame=benchmark.test_frame(args.raw, args.split))
    rows = benchmark.tradeoff_rows(summary, scores)
    io.write_csv(args.plots / "tradeoff.csv", rows, ["variant", "latency_ms", "test_dice", "file_mb"])
    env = summary["environment"]
    benchmark.tradeoff_figure(rows, args.plots / "tradeoff.png",
                              f"test Dice vs 1-thread latency, {env['cpu']}")
    benchmark.bars_figure(summary, args.plots / "size_latency.png")
    io.write_json(args.metrics, summary)
    gain = summary["speedups"]["vs_teacher_threads_1"][INT8_VARIANT]
    print(f"benchmark: {INT8_VARIANT} is {gain}x faster than the teacher in PyTorch (1 thread); the deployable file "
          f"takes {summary['end_to_end']['frames']['scan']['p50_ms']} ms per frame end to end -> {args.metrics}")


if __name__ == "__main__":
    main()
