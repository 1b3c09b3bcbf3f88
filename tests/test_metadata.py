"""metadata.py: the run id follows exactly the params and bytes that shape a model; the metadata a model file
carries comes from the params."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from ultraseg import params as params_mod
from ultraseg.metadata import data_files, model_meta, run_id
from tests.conftest import shipped_params

BASE = {"preprocess": {"size": 32}, "train": {"epochs": 1, "model": {"widths": [4, 8, 16]}}}


def params(overrides: dict | None = None) -> params_mod.Params:
    data = json.loads(json.dumps(BASE))
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return shipped_params(data)


@pytest.fixture
def files(tmp_path) -> tuple[Path, ...]:
    data = tmp_path / "data"
    data.mkdir()
    for k, path in enumerate(data_files(data)):
        path.write_bytes(bytes([k]) * (10 + k))
    return data_files(data)


def test_data_files_are_the_index_and_the_arrays(tmp_path):
    assert data_files(tmp_path) == (tmp_path / "index.csv", tmp_path / "images.npy", tmp_path / "masks.npy")


def test_run_id_is_a_short_hex_digest_and_stable(files):
    rid = run_id(params(), *files)
    assert re.fullmatch(r"[0-9a-f]{16}", rid)
    assert run_id(params(), *files) == rid
    assert run_id(shipped_params(json.loads(json.dumps(BASE))), *files) == rid


@pytest.mark.parametrize("section, change", [
    ("train", {"lr": 0.001}),
    ("train", {"seed": 1}),
    ("train", {"model": {"widths": [4, 8, 32]}}),
    ("preprocess", {"size": 64}),
    ("preprocess", {"filter": "lee"}),
])
def test_run_id_changes_with_a_train_or_preprocess_param(files, section, change):
    assert run_id(params({section: change}), *files) != run_id(params(), *files)


@pytest.mark.parametrize("section, change", [
    ("evaluate", {"bootstrap": 10}),
    ("export", {"opset": 19}),
    ("benchmark", {"runs": 5}),
    ("quantize", {"calibration_images": 8}),
])
def test_run_id_ignores_params_that_do_not_shape_the_model(files, section, change):
    assert run_id(params({section: change}), *files) == run_id(params(), *files)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_run_id_changes_when_a_data_file_changes(files, which):
    before = run_id(params(), *files)
    data = bytearray(files[which].read_bytes())
    data[-1] ^= 0xFF
    files[which].write_bytes(bytes(data))
    assert run_id(params(), *files) != before


def test_run_id_depends_on_bytes_not_on_where_they_are(files, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(files[0].parent, copy)
    assert run_id(params(), *data_files(copy)) == run_id(params(), *files)


def test_run_id_covers_extra_files(files, tmp_path):
    """Stages add their own inputs (the split, a teacher checkpoint) after the data files."""
    split = tmp_path / "split.csv"
    split.write_text("id,class,split\na,benign,train\n")
    with_split = run_id(params(), split, *files)
    assert with_split != run_id(params(), *files)
    split.write_text("id,class,split\na,benign,val\n")
    assert run_id(params(), split, *files) != with_split


def test_run_id_of_a_missing_file_fails(files, tmp_path):
    with pytest.raises(FileNotFoundError):
        run_id(params(), *files, tmp_path / "absent.csv")


def test_model_meta_carries_the_params():
    p = params({"preprocess": {"normalize": "unit", "filter": "median"}, "train": {"threshold": 0.4}})
    config = p.train.model.config()
    meta = model_meta(p, config, "teacher", "abc123")
    assert set(meta) == {"kind", "model", "preprocess", "normalize", "size", "threshold", "run_id"}
    assert meta["kind"] == "teacher"
    assert meta["model"] == config and meta["model"]["widths"] == [4, 8, 16]
    assert meta["preprocess"] == params_mod.to_dict(p.preprocess)
    assert meta["preprocess"]["filter"] == "median"
    assert meta["normalize"] == "unit"
    assert meta["size"] == 32
    assert meta["threshold"] == 0.4
    assert meta["run_id"] == "abc123"


def test_model_meta_is_plain_json():
    meta = model_meta(params(), {"name": "unet", "widths": [4, 8, 16]}, "student", "x")
    assert json.loads(json.dumps(meta)) == meta
