"""The prune-finetune stage's work on a tiny workspace: the student loses half its channels in one step, is fine-tuned
for one epoch, and is saved as a smaller network that rebuilds from its checkpoint; the summary's numbers agree with
the networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, shipped_params, tiny_workspace
from ultraseg import checkpoint, params as params_mod, precision as precision_mod
from ultraseg.metadata import data_files, model_meta, run_id
from ultraseg.models.registry import build_model, count_macs, count_parameters
from ultraseg.pipeline import prune_finetune
from ultraseg.pruning import pruned_widths

SIZE = 32
STUDENT = [8, 16, 32]
PARAMS = {
    "preprocess": {"size": SIZE},
    "train": {"device": "cpu", "threads": 1, "epochs": 1, "batch_size": 4, "warmup_epochs": 0,
              "model": {"widths": TINY}},
    "distill": {"epochs": 1, "student": {"widths": STUDENT, "stem_stride": 4, "up": "nearest"}},
    "prune": {"ratio": 0.5, "steps": 1, "finetune_epochs": 1, "calibration_batches": 1},
}
SUMMARY_KEYS = {
    "params_before", "params_after", "params_ratio", "macs_before", "macs_after", "macs_ratio", "bytes_before",
    "bytes_after", "bytes_ratio", "val_dice_teacher", "val_dice_before", "val_dice_pruned_no_finetune",
    "val_dice_after", "teacher_to_pruned_macs", "teacher_to_pruned_params", "finetune_epochs_total",
    "precision", "cpu_features",
}
TEACHER_VAL_DICE, STUDENT_VAL_DICE = 0.25, 0.5


def save_network(path: Path, params, config: dict, kind: str, val_dice: float, seed: int) -> None:
    """An untrained network saved as the train or distill stage would, with a made-up val Dice."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():  # unequal BatchNorm scales, so that bn_scale ranks channels for real
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.1, 1.0)
    checkpoint.save(path, model.eval(), model_meta(params, config, kind, f"{kind}-run") | {"val": {"dice": val_dice}})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    data, split = tiny_workspace(root, {"benign": 6, "malignant": 5, "normal": 3})
    params = shipped_params(PARAMS)
    save_network(root / "teacher.pt", params, params.train.model.config(), "teacher", TEACHER_VAL_DICE, 0)
    save_network(root / "student.pt", params, params.distill.student.config(), "student", STUDENT_VAL_DICE, 1)
    return root, data, split


def run(params, workspace, out_dir: Path) -> dict:
    root, data, split = workspace
    return prune_finetune.run(params, data, split, root / "teacher.pt", root / "student.pt", out_dir / "pruned.pt",
                              out_dir / "live")


@pytest.fixture(scope="module")
def pruned(workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned")
    student_bytes = (workspace[0] / "student.pt").read_bytes()
    params = shipped_params(PARAMS)
    summary = run(params, workspace, out)
    return params, out, summary, student_bytes


def test_summary_keys(pruned):
    _, _, summary, _ = pruned
    assert set(summary) == SUMMARY_KEYS
    assert summary["finetune_epochs_total"] == 1
    features = precision_mod.cpu_features()  # train.precision: auto, read on this machine
    assert summary["cpu_features"] == list(features)
    assert summary["precision"] == ("bf16" if precision_mod.cpu_has_bf16(features) else "fp32")
    json.dumps(summary, allow_nan=False)  # what the stage writes to metrics/prune.json


def test_val_dice_before_comes_from_the_checkpoints(pruned):
    _, _, summary, _ = pruned
    assert summary["val_dice_teacher"] == TEACHER_VAL_DICE
    assert summary["val_dice_before"] == STUDENT_VAL_DICE
    for key in ("val_dice_pruned_no_finetune", "val_dice_after"):
        assert 0.0 <= summary[key] <= 1.0


def test_the_pruned_network_is_smaller(workspace, pruned):
    _, out, summary, _ = pruned
    student, _ = checkpoint.load(workspace[0] / "student.pt")
    teacher, _ = checkpoint.load(workspace[0] / "teacher.pt")
    model, _ = checkpoint.load(out / "pruned.pt")
    assert summary["params_before"] == count_parameters(student)
    assert summary["params_after"] == count_parameters(model) < summary["params_before"]
    assert summary["macs_before"] == count_macs(student, SIZE)
    assert summary["macs_after"] == count_macs(model, SIZE) < summary["macs_before"]
    assert summary["bytes_after"] < summary["bytes_before"]
    assert summary["params_ratio"] == round(summary["params_after"] / summary["params_before"], 4)
    assert summary["teacher_to_pruned_params"] == round(count_parameters(teacher) / summary["params_after"], 2)
    assert summary["teacher_to_pruned_macs"] == round(count_macs(teacher, SIZE) / summary["macs_after"], 2)


def test_the_checkpoint_rebuilds_the_pruned_network(workspace, pruned):
    params, out, summary, _ = pruned
    root, data, split = workspace
    model, meta = checkpoint.load(out / "pruned.pt")
    student, _ = checkpoint.load(root / "student.pt")
    assert meta["kind"] == "pruned_student"
    assert meta["model"] == params.distill.student.config()
    assert meta["size"] == SIZE and meta["normalize"] == "zscore"
    assert meta["pruned_widths"] == pruned_widths(model)
    before = pruned_widths(student)
    assert set(meta["pruned_widths"]) == set(before)
    # half of every prunable layer's channels, multiples of round_to; the 1-channel head stays
    assert max(meta["pruned_widths"].values()) == max(STUDENT) // 2
    assert all(w <= before[name] for name, w in meta["pruned_widths"].items())
    assert meta["prune"] == params_mod.to_dict(params.prune)
    assert meta["val_dice"] == summary["val_dice_after"]
    assert meta["run_id"] == run_id(params, split, *data_files(data), root / "student.pt") + \
        params_mod.digest(params.prune)
    with torch.no_grad():
        logits, presence = model(torch.zeros(1, 1, SIZE, SIZE))
    assert logits.shape == (1, 1, SIZE, SIZE) and presence.shape == (1, 1)  # the presence head survives


def test_the_student_checkpoint_is_left_alone(workspace, pruned):
    *_, student_bytes = pruned
    assert (workspace[0] / "student.pt").read_bytes() == student_bytes


def test_finetune_curves_are_logged(pruned):
    _, out, _, _ = pruned
    curve = (out / "live" / "plots" / "metrics" / "val" / "dice.tsv").read_text().splitlines()
    assert curve[0].split("\t") == ["step", "dice"]
    assert len(curve) == 1 + 1  # one step of one epoch
    assert sorted(p.name for p in out.iterdir()) == ["live", "pruned.pt"]


def test_two_steps_prune_further_and_finetune_after_each(workspace, tmp_path):
    params = shipped_params(PARAMS | {"prune": PARAMS["prune"] | {"steps": 2}})
    summary = run(params, workspace, tmp_path)
    assert summary["finetune_epochs_total"] == 2
    curve = (tmp_path / "live" / "plots" / "metrics" / "val" / "dice.tsv").read_text().splitlines()
    assert len(curve) == 1 + 2
    _, meta = checkpoint.load(tmp_path / "pruned.pt")
    assert max(meta["pruned_widths"].values()) == max(STUDENT) // 2  # the same ratio, reached in two steps
