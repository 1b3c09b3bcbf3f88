"""The report generator fails loudly when a metrics file is missing."""

from __future__ import annotations

import json

import pytest

from ultraseg import params as params_mod, report


def test_missing_metrics_file_is_an_error_naming_it(tmp_path) -> None:
    (tmp_path / "split.json").write_text(json.dumps({}))
    with pytest.raises(report.ReportError, match="preprocess.json: metrics file missing"):
        report.render(tmp_path, params_mod.from_dict({}), tmp_path / "params.yaml")


def test_report_stage_exits_with_one_line(tmp_path, repo_root) -> None:
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text("{}\n")
    result = subprocess.run([sys.executable, str(repo_root / "stages/report.py"), "--metrics", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'split.json'}: metrics file missing; "
                                                  "run the stage that writes it (dvc repro)"]
