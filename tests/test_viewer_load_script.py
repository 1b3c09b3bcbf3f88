"""scripts/viewer_load.py: a real ``ultraseg serve`` on loopback, loaded and sent hostile uploads, and what the
script writes says what the server answered."""

from __future__ import annotations

import json

from tests.conftest import load_script


def test_the_probe_records_every_answer_and_the_refusals(zoo, busi_mirror, tmp_path, capsys):
    out = tmp_path / "load.json"
    load_script("scripts/viewer_load.py").main([
        "--model", str(zoo.models / "deploy" / "ultraseg.int8.onnx"), "--image",
        str(busi_mirror / "benign" / "benign (1).webp"), "--uploads", "12", "--clients", "3", "--max-upload-mb", "2",
        "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["load"]["uploads"] == 12 and result["load"]["answered_200"] == 12
    assert result["load"]["p50_ms"] <= result["load"]["p99_ms"]
    for key in ("declared_20000x20000_png", "declared_30000x30000_png"):
        assert result[key]["status"] == 413 and "megapixels" in result[key]["json_error"]
    assert result["body_25mb"]["status"] == 413 and "2 MB limit" in result["body_25mb"]["json_error"]
    assert json.loads(capsys.readouterr().out) == result
