"""The report stage: a missing metrics file is an error naming it, never a silently shorter report."""

from __future__ import annotations

import json

import pytest

from ultraseg import params as params_mod
from ultraseg.pipeline import report
from tests.conftest import shipped_params


def test_missing_metrics_file_is_an_error_naming_it(tmp_path) -> None:
    (tmp_path / "split.json").write_text(json.dumps({}))
    with pytest.raises(report.ReportError, match="preprocess.json: metrics file missing"):
        report.render(tmp_path, shipped_params(), tmp_path / "params.yaml")


def test_report_stage_exits_with_one_line(tmp_path, repo_root, params_file) -> None:
    import subprocess
    import sys

    params_file(tmp_path / "params.yaml")
    result = subprocess.run([sys.executable, str(repo_root / "stages/report.py"), "--metrics", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'split.json'}: metrics file missing; "
                                                  "run the stage that writes it (dvc repro)"]


def _committed_metrics(repo_root, dest):
    """A copy of the repository's committed metrics files, which the report must render as they are."""
    dest.mkdir()
    for path in (repo_root / "metrics").glob("*.json"):
        (dest / path.name).write_text(path.read_text())
    return {path.stem: json.loads(path.read_text()) for path in dest.glob("*.json")}


def test_the_new_benchmark_and_training_figures_render_only_when_their_keys_are_there(tmp_path, repo_root) -> None:
    metrics = _committed_metrics(repo_root, tmp_path / "metrics")
    params = params_mod.load(repo_root / "params.yaml")
    bench, train = metrics["benchmark"], metrics["train"]
    bench.pop("training_steps", None)
    bench["settings"].pop("memory_goal_mb", None)
    train.pop("precision", None)
    for name, data in (("benchmark", bench), ("train", train)):
        (tmp_path / "metrics" / f"{name}.json").write_text(json.dumps(data))
    before = report.render(tmp_path / "metrics", params, tmp_path / "params.yaml")
    assert "goal ≤" not in before and "Training step (`training_steps`)" not in before
    assert "the process holding the runtime alone peaked at" in " ".join(before.split())

    bench["settings"]["memory_goal_mb"] = 150
    bench["end_to_end"]["peak_rss_mb"] = 93.4
    bench["training_steps"] = {"cpu_features": ["avx512f", "avx512_bf16"], "bf16_supported": True,
                               "teacher": {"fp32_ms": 300.0, "bf16_ms": 200.0, "speedup": 1.5},
                               "student": {"fp32_ms": 40.0, "bf16_ms": None, "speedup": None}}
    train |= {"precision": "bf16", "cpu_features": ["avx512f", "avx512_bf16"]}
    for name, data in (("benchmark", bench), ("train", train)):
        (tmp_path / "metrics" / f"{name}.json").write_text(json.dumps(data))
    after = " ".join(report.render(tmp_path / "metrics", params, tmp_path / "params.yaml").split())
    assert "peaked at 93.4 MB, goal ≤ 150 MB (`benchmark.memory_goal_mb`): met" in after
    assert "| teacher | 300.0 | 200.0 | 1.50 | | student | 40.0 | – | – |" in after
    assert f"{train['train_minutes']} min on {train['device']} in bf16." in after
