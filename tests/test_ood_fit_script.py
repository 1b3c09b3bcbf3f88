"""scripts/ood_fit.py: the deploy stage's OOD fit on a copy of a file, measured as the robustness stage measures."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_script, train_val_split, write_params


@pytest.fixture
def script():
    return load_script("scripts/ood_fit.py")


def test_refits_a_copy_and_reports_the_built_set_the_scans_and_the_shifts(script, zoo, tmp_path):
    source = zoo.models / "pruned.int8.onnx"
    before = source.read_bytes()
    split = train_val_split(zoo, tmp_path / "split.csv")
    out, report = tmp_path / "refit" / "model.onnx", tmp_path / "report.json"
    params = write_params(tmp_path / "params.yaml", {"preprocess": {"size": zoo.size}})
    script.main(["--model", str(source), "--raw", str(zoo.raw), "--split", str(split), "--out", str(out),
                 "--report", str(report), "--params", str(params), "--split-name", "val"])
    summary = json.loads(report.read_text())
    assert source.read_bytes() == before and out.is_file()
    assert summary["fit"]["train_images"] == 6 and summary["fit"]["fitted_frames"] == 12
    assert summary["fit"]["val_pass"] >= summary["fit"]["val_pass_target"]
    assert summary["checked"] and summary["threshold"] == summary["fit"]["threshold"]
    assert summary["built"]["frames"] == 40 and summary["scans"] == summary["scans"] | {"split": "val", "images": 3}
    assert summary["scans"]["flagged"] == round(1 - summary["fit"]["val_pass"], 4)  # the same val scans, answered alike
    flagged = summary["shifted"]["flagged"]
    assert len(flagged) == 12 and all(set(levels) == {"mild", "moderate", "strong"} for levels in flagged.values())


def test_the_source_file_is_never_the_output(script, zoo, tmp_path):
    model = str(zoo.models / "pruned.int8.onnx")
    with pytest.raises(SystemExit):
        script.main(["--model", model, "--raw", str(zoo.raw), "--split", str(zoo.split), "--out", model,
                     "--report", str(tmp_path / "r.json")])
