"""The export stage's work on tiny checkpoints: an ONNX file of every network that matches its checkpoint, carries its
metadata and the export params' hash, and a summary of sizes and parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ultraseg import checkpoint, onnx_io, params as params_mod
from ultraseg.models.registry import build_model, count_parameters
from ultraseg.onnx_io import ParityError
from ultraseg.pipeline import export
from ultraseg.runtime.model_files import NETWORKS, checkpoint_file, onnx_predictor
from tests.conftest import shipped_params

ENTRY_KEYS = {"bytes", "params", "gmacs", "parity_max_abs", "parity_max_rel", "parity_shapes"}


SIZE = 32
WIDTHS = {"teacher": [8, 16], "student": [4, 8], "pruned": [4, 8]}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Untrained tiny checkpoints of every network, as the train, distill and prune stages save them (cheaper than
    the zoo, which also exports and quantizes)."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for network, widths in WIDTHS.items():
        config = {"name": "unet", "widths": widths, "up": "nearest"}
        meta = {"kind": network, "model": config, "size": SIZE, "threshold": 0.5, "normalize": "zscore"}
        checkpoint.save(folder / checkpoint_file(network), build_model(config).eval(), meta)
    return folder


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    params = shipped_params({"preprocess": {"size": SIZE}})
    out = tmp_path_factory.mktemp("export") / "onnx"
    out.mkdir()
    return params, out, export.export_all(params, models, out)


def test_summary_keys(exported):
    params, _, summary = exported
    assert list(summary) == ["opset", "exporter", "rtol", "atol", *NETWORKS]
    assert summary["opset"] == params.export.opset and summary["exporter"] == params.export.exporter
    assert summary["rtol"] == params.export.rtol and summary["atol"] == params.export.atol
    for name in NETWORKS:
        assert set(summary[name]) == ENTRY_KEYS, name
    json.dumps(summary, allow_nan=False)  # what the stage writes to metrics/export.json


def test_one_file_per_network_and_nothing_else(exported):
    _, out, summary = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.onnx" for n in NETWORKS)
    for name in NETWORKS:
        assert summary[name]["bytes"] == (out / f"{name}.onnx").stat().st_size


def test_sizes_and_parity_are_reported_per_network(models, exported):
    params, _, summary = exported
    for name in NETWORKS:
        model, _ = checkpoint.load(models / checkpoint_file(name))
        entry = summary[name]
        assert entry["params"] == count_parameters(model)
        assert entry["gmacs"] >= 0 and isinstance(entry["gmacs"], float)
        assert entry["parity_shapes"] == [f"2x1x{params.export.parity_height}x{params.export.parity_width}",
                                          f"1x1x{SIZE}x{SIZE}"]
        assert 0.0 <= entry["parity_max_abs"] <= params.export.atol + params.export.rtol * 100
    # the teacher has twice the student's widths: the numbers are each network's own
    assert summary["teacher"]["params"] > summary["student"]["params"]
    assert summary["teacher"]["bytes"] > summary["student"]["bytes"]


def test_files_carry_the_checkpoint_metadata_and_params_hash(models, exported):
    params, out, _ = exported
    for name in NETWORKS:
        _, meta = checkpoint.load(models / checkpoint_file(name))
        stored = onnx_io.read_metadata(out / f"{name}.onnx")
        assert stored == meta | {"params_hash": params_mod.digest(params.export)}
        assert stored["kind"] == name


def test_files_compute_what_their_checkpoints_compute(models, exported):
    _, out, _ = exported
    x = np.random.default_rng(0).standard_normal((2, 1, SIZE, SIZE)).astype(np.float32)
    for name in NETWORKS:
        model, _ = checkpoint.load(models / checkpoint_file(name))
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(onnx_predictor(out / f"{name}.onnx", threads=1)(x).logits, want, rtol=1e-3, atol=1e-4)


def test_a_missing_checkpoint_names_the_file(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    params = shipped_params({"preprocess": {"size": SIZE}})
    with pytest.raises(FileNotFoundError) as err:
        export.export_all(params, empty, tmp_path / "onnx")
    assert str(empty / "teacher.pt") in str(err.value)
    assert not (tmp_path / "onnx").exists()


def test_parity_failure_stops_the_export(models, tmp_path, monkeypatch):
    """A file that does not match its model fails the stage: the parity check's error is not swallowed."""
    def mismatch(model, path, params):
        raise ParityError(f"{path}: ONNX Runtime and PyTorch disagree")

    def fake_export(model, path, params, meta):  # skips the slow real export: only parity is under test here
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not onnx")

    monkeypatch.setattr(onnx_io, "export", fake_export)
    monkeypatch.setattr(onnx_io, "parity", mismatch)
    params = shipped_params({"preprocess": {"size": SIZE}})
    with pytest.raises(ParityError, match="teacher.onnx"):
        export.export_all(params, models, tmp_path / "onnx")
