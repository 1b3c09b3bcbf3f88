"""The distill stage's work on a tiny workspace: what it records of the training precision, and the precision it
refuses before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, shipped_params, tiny_workspace
from ultraseg import checkpoint, params as params_mod, precision as precision_mod
from ultraseg.metadata import model_meta
from ultraseg.models.registry import build_model
from ultraseg.pipeline import distill

PARAMS = {
    "preprocess": {"size": 32},
    "train": {"device": "cpu", "threads": 1, "epochs": 1, "batch_size": 4, "warmup_epochs": 0,
              "model": {"widths": TINY}},
    "distill": {"epochs": 1, "baseline": False, "keep": "distilled",
                "student": {"widths": [4, 8, 16], "stem_stride": 2, "up": "nearest"}},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("distill")
    data, split = tiny_workspace(root, {"benign": 6, "malignant": 5, "normal": 3})
    params = shipped_params(PARAMS)
    torch.manual_seed(0)
    config = params.train.model.config()
    checkpoint.save(root / "teacher.pt", build_model(config).eval(),
                    model_meta(params, config, "teacher", "teacher-run") | {"val": {"dice": 0.5}})
    return root, data, split


def run(params, workspace, out: Path) -> dict:
    root, data, split = workspace
    return distill.run(params, data, split, root / "teacher.pt", out / "student.pt", out / "live",
                       out / "baseline_live", out / "resume")


def test_distill_records_the_precision_and_the_cpu_features(workspace, tmp_path):
    summary = run(shipped_params(PARAMS), workspace, tmp_path)
    features = precision_mod.cpu_features()  # train.precision: auto, read on this machine
    expected = {"precision": "bf16" if precision_mod.cpu_has_bf16(features) else "fp32",
                "cpu_features": list(features)}
    assert {k: summary[k] for k in expected} == expected
    assert {k: summary["student"][k] for k in expected} == expected
    assert (tmp_path / "student.pt").exists()


def test_bf16_on_a_cpu_without_it_is_refused_before_any_work(workspace, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_features", lambda: ())
    params = shipped_params(PARAMS | {"train": PARAMS["train"] | {"precision": "bf16"}})
    with pytest.raises(params_mod.ParamsError, match=r"^train\.precision: bf16 needs a CPU with avx512_bf16 or "
                                                     r"amx_bf16; this one has neither \(use auto or fp32\)$"):
        run(params, workspace, tmp_path)
    assert not (tmp_path / "live").exists() and not (tmp_path / "student.pt").exists()
