"""benchmark: parameters, MACs, file size, latency, throughput and peak memory of every model variant on this CPU.

Reads the `benchmark` params section (input size, thread counts, repeats, disturbance limit), models/ and
metrics/evaluate.json (test Dice for the trade-off plot). Writes metrics/benchmark.json (environment, settings,
per variant and thread count p50/p95 batch-1 latency, batch throughput, peak RSS, the disturbance seen; speed-ups
over the teacher) and plots/benchmark/ (Dice-vs-latency trade-off as PNG and CSV, size and latency bars as PNG).
Each variant runs in a fresh process; compare variants within one run, never across runs.
"""

from pathlib import Path

from ultraseg import io
from ultraseg.pipeline import benchmark
from ultraseg.cli import fail_cleanly, parse, parser
from ultraseg.variants import DEPLOYED


@fail_cleanly
def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--evaluate", type=Path, default=Path("metrics/evaluate.json"))
    ap.add_argument("--metrics", type=Path, default=Path("metrics/benchmark.json"))
    ap.add_argument("--plots", type=Path, default=Path("plots/benchmark"))
    args, params = parse(ap, argv)
    if not args.evaluate.exists():
        raise FileNotFoundError(f"{args.evaluate}: missing; run the evaluate stage first (dvc repro evaluate)")
    scores = io.read_json(args.evaluate)
    summary = benchmark.run(params, args.models)
    rows = benchmark.tradeoff_rows(summary, scores)
    io.write_csv(args.plots / "tradeoff.csv", rows, ["variant", "latency_ms", "test_dice", "file_mb"])
    env = summary["environment"]
    benchmark.tradeoff_figure(rows, args.plots / "tradeoff.png",
                              f"test Dice vs 1-thread latency, {env['cpu']}")
    benchmark.bars_figure(summary, args.plots / "size_latency.png")
    io.write_json(args.metrics, summary)
    gain = summary["speedups"]["vs_teacher_threads_1"][DEPLOYED]
    print(f"benchmark: {DEPLOYED} is {gain}x faster than the teacher in PyTorch (1 thread) -> {args.metrics}")


if __name__ == "__main__":
    main()
