"""The train stage's work on a tiny workspace: one epoch of a tiny teacher, saved with its metadata, a summary, the
learning curves, and no resume file left behind; with ``train.members`` an ensemble of such teachers, resumable
member by member."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, shipped_params, tiny_workspace
from ultraseg import checkpoint, params as params_mod, precision as precision_mod
from ultraseg.ensemble import Ensemble
from ultraseg.metadata import data_files, run_id
from ultraseg.models.registry import build_model, count_parameters
from ultraseg.pipeline import train

SIZE = 32
PARAMS = {
    "preprocess": {"size": SIZE},
    "train": {"device": "cpu", "threads": 1, "epochs": 1, "batch_size": 4, "warmup_epochs": 0,
              "model": {"widths": TINY}},
}
SUMMARY_KEYS = {"model", "params", "gmacs", "best_epoch", "epochs_run", "val_dice", "val_iou", "val_normal_clean",
                "val_presence_auc", "train_minutes", "device", "precision", "cpu_features"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_workspace(tmp_path_factory.mktemp("train"), {"benign": 6, "malignant": 5, "normal": 3})


def run(params, workspace, out_dir: Path) -> dict:
    data, split = workspace
    return train.run(params, data, split, out_dir / "teacher.pt", out_dir / "live", out_dir / "resume" / "train.pt")


def test_train_writes_teacher_summary_and_curves(workspace, tmp_path):
    params = shipped_params(PARAMS)
    summary = run(params, workspace, tmp_path)

    assert set(summary) == SUMMARY_KEYS
    assert summary["model"] == "unet" and summary["device"] == "cpu"
    features = precision_mod.cpu_features()  # read from this machine, as the stage read them
    assert summary["cpu_features"] == list(features)
    assert summary["precision"] == ("bf16" if precision_mod.cpu_has_bf16(features) else "fp32")  # train.precision: auto
    assert summary["epochs_run"] == 1 and summary["best_epoch"] == 1
    assert summary["params"] == count_parameters(build_model(params.train.model.config()))
    assert summary["gmacs"] > 0
    assert 0.0 <= summary["val_dice"] <= 1.0 and 0.0 <= summary["val_iou"] <= summary["val_dice"]
    assert summary["val_normal_clean"] in (0.0, 1.0)  # the one normal val image: clean or not
    assert 0.0 <= summary["val_presence_auc"] <= 1.0  # the presence head (train.model.presence) ranks val images
    json.dumps(summary, allow_nan=False)  # what the stage writes to metrics/train.json

    model, meta = checkpoint.load(tmp_path / "teacher.pt")
    data, split = workspace
    assert meta["kind"] == "teacher"
    assert meta["model"] == params.train.model.config() and meta["model"]["widths"] == TINY
    assert meta["size"] == SIZE and meta["normalize"] == "zscore" and meta["threshold"] == 0.5
    assert meta["preprocess"] == params_mod.to_dict(params.preprocess)
    assert meta["run_id"] == run_id(params, split, *data_files(data))
    assert meta["epoch"] == 1
    assert round(meta["val"]["dice"], 4) == summary["val_dice"]
    assert count_parameters(model) == summary["params"]
    with torch.no_grad():
        logits, presence = model(torch.zeros(1, 1, SIZE, SIZE))
    assert logits.shape == (1, 1, SIZE, SIZE) and presence.shape == (1, 1)

    assert not (tmp_path / "resume" / "train.pt").exists()  # finished: nothing to resume
    curve = (tmp_path / "live" / "plots" / "metrics" / "val" / "dice.tsv").read_text().splitlines()
    assert curve[0].split("\t") == ["step", "dice"] and len(curve) == 2
    assert round(float(curve[1].split("\t")[1]), 4) == summary["val_dice"]


def test_train_is_reproducible(workspace, tmp_path):
    params = shipped_params(PARAMS)
    first = run(params, workspace, tmp_path / "a")
    second = run(params, workspace, tmp_path / "b")
    assert {k: v for k, v in first.items() if k != "train_minutes"} == \
        {k: v for k, v in second.items() if k != "train_minutes"}
    a = torch.load(tmp_path / "a" / "teacher.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "teacher.pt", weights_only=True)
    assert a["meta"] == b["meta"]
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key


def test_another_train_param_gives_another_run_id_and_model(workspace, tmp_path):
    base = shipped_params(PARAMS)
    other = shipped_params(PARAMS | {"train": PARAMS["train"] | {"seed": 7}})
    run(base, workspace, tmp_path / "a")
    run(other, workspace, tmp_path / "b")
    a = torch.load(tmp_path / "a" / "teacher.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "teacher.pt", weights_only=True)
    assert a["meta"]["run_id"] != b["meta"]["run_id"]
    assert any(not torch.equal(v, b["state"][k]) for k, v in a["state"].items())


def test_a_batch_larger_than_the_train_split_is_refused(workspace, tmp_path):
    params = shipped_params(PARAMS | {"train": PARAMS["train"] | {"batch_size": 64}})
    with pytest.raises(params_mod.ParamsError, match="batch_size"):
        run(params, workspace, tmp_path)
    assert not (tmp_path / "teacher.pt").exists()


def test_bf16_on_a_cpu_without_it_is_refused_before_training(workspace, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_features", lambda: ("avx2",))
    params = shipped_params(PARAMS | {"train": PARAMS["train"] | {"precision": "bf16"}})
    with pytest.raises(params_mod.ParamsError, match=r"^train\.precision: bf16 needs a CPU with avx512_bf16 or "
                                                     r"amx_bf16; this one has avx2 \(use auto or fp32\)$"):
        run(params, workspace, tmp_path)
    assert not (tmp_path / "live").exists() and not (tmp_path / "teacher.pt").exists()


ENSEMBLE = PARAMS | {"train": PARAMS["train"] | {"members": 2}}


def test_members_train_one_network_per_seed_and_save_their_ensemble(workspace, tmp_path):
    params = shipped_params(ENSEMBLE)
    summary = run(params, workspace, tmp_path)

    assert set(summary) == SUMMARY_KEYS | {"members"}
    assert [m["seed"] for m in summary["members"]] == [params.train.seed, params.train.seed + 1]
    assert summary["best_epoch"] == [1, 1] and summary["epochs_run"] == [1, 1]
    one = count_parameters(build_model(params.train.model.config()))
    assert summary["params"] == 2 * one
    model, meta = checkpoint.load(tmp_path / "teacher.pt")
    assert isinstance(model, Ensemble) and len(model.members) == 2 and meta["members"] == 2
    assert round(meta["val"]["dice"], 4) == summary["val_dice"]  # the ensemble's own val score, not a member's
    # each member is the network a one-member run at its seed trains, bit for bit
    single = shipped_params(PARAMS | {"train": PARAMS["train"] | {"seed": params.train.seed + 1}})
    run(single, workspace, tmp_path / "single")
    alone, _ = checkpoint.load(tmp_path / "single" / "teacher.pt")
    for key, value in alone.state_dict().items():
        assert torch.equal(model.members[1].state_dict()[key], value), key
    for curves in (tmp_path / "live", tmp_path / "live" / "member1"):  # the first member's are the stage's
        assert (curves / "plots" / "metrics" / "val" / "dice.tsv").is_file()
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == []  # finished: no member left behind
    json.dumps(summary, allow_nan=False)


def interrupt_after_member_0(monkeypatch, params, workspace, out: Path) -> None:
    """``run`` killed while training member 1, as kill -9 would leave it: member 0 finished and kept."""
    real = train.fit_member

    def crash_on_the_second(*args):
        if args[1].seed != params.train.seed:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train, "fit_member", crash_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run(params, workspace, out)
    monkeypatch.setattr(train, "fit_member", real)
    assert not (out / "teacher.pt").exists() and (out / "resume" / "train.member0.pt").is_file()


def count_fits(monkeypatch) -> list[int]:
    """The seeds of the members ``run`` trains from now on."""
    fitted, real = [], train.fit_member
    monkeypatch.setattr(train, "fit_member", lambda *args: fitted.append(args[1].seed) or real(*args))
    return fitted


def test_an_interrupted_ensemble_trains_only_the_members_it_had_not_finished(workspace, tmp_path, monkeypatch):
    params = shipped_params(ENSEMBLE)
    interrupt_after_member_0(monkeypatch, params, workspace, tmp_path / "cut")
    fitted = count_fits(monkeypatch)
    run(params, workspace, tmp_path / "cut")
    assert fitted == [params.train.seed + 1]  # member 0 was kept from the interrupted run

    run(params, workspace, tmp_path / "whole")
    a = torch.load(tmp_path / "cut" / "teacher.pt", weights_only=True)
    b = torch.load(tmp_path / "whole" / "teacher.pt", weights_only=True)
    assert a["meta"] == b["meta"]
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key


def test_a_member_kept_by_other_params_is_not_reused(workspace, tmp_path, monkeypatch):
    interrupt_after_member_0(monkeypatch, shipped_params(ENSEMBLE), workspace, tmp_path)
    other = shipped_params(ENSEMBLE | {"train": ENSEMBLE["train"] | {"seed": 7}})
    fitted = count_fits(monkeypatch)
    run(other, workspace, tmp_path)
    assert fitted == [7, 8]
