"""scripts/student_front.py: the configuration table, the front, the archive packing, the timing ratios and the
ensemble standing in for the distill stage's teacher checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT, load_script
from ultraseg import params as params_mod


@pytest.fixture(scope="module")
def front():
    return load_script("scripts/student_front.py")


@pytest.fixture(scope="module")
def committed() -> dict:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def test_every_configuration_changes_only_the_student_and_base_changes_nothing(front, committed):
    shipped = params_mod.from_dict(committed)
    for name, config in front.CONFIGS.items():
        params = front.student_params(committed, config.student)
        student = params_mod.to_dict(params.distill.student)
        assert student == {**params_mod.to_dict(shipped.distill.student), **config.student}, name
        assert params.train == shipped.train and params.preprocess == shipped.preprocess, name
        assert params.distill.epochs == shipped.distill.epochs, name
    assert front.CONFIGS["base"].student == {} and front.CONFIGS["base-ensemble"].teacher == "ensemble"
    assert front.student_params(committed, {}) == shipped


def test_overrides_are_applied_without_touching_the_committed_dict(front, committed):
    before = yaml.safe_dump(committed)
    params = front.student_params(committed, {"widths": [24, 48, 64], "stem_stride": 2},
                                  {"seed": 43, "threads": 2}, {"epochs": 3})
    assert tuple(params.distill.student.widths) == (24, 48, 64) and params.distill.student.stem_stride == 2
    assert (params.train.seed, params.train.threads, params.distill.epochs) == (43, 2, 3)
    assert yaml.safe_dump(committed) == before


@pytest.mark.parametrize("student, train, distill, where", [
    ({"width": [8, 16, 32]}, None, None, "distill.student has no width"),
    ({}, {"sead": 1}, None, "train has no sead"),
    ({}, None, {"epoch": 1}, "distill has no epoch"),
])
def test_unknown_keys_are_refused(front, committed, student, train, distill, where):
    with pytest.raises(KeyError, match=where):
        front.student_params(committed, student, train, distill)


def test_invalid_values_are_refused_by_the_params_validation(front, committed):
    with pytest.raises(params_mod.ParamsError):
        front.student_params(committed, {"norm": "layer"})


def test_unknown_configuration_on_the_command_line_is_refused(front):
    with pytest.raises(SystemExit):
        front.parse_args(["--configs", "base,huge"])
    with pytest.raises(SystemExit):  # an ensemble of one teacher is no ensemble
        front.parse_args(["--configs", "base-ensemble", "--members", "1"])
    args = front.parse_args(["--configs", "base, narrow", "--student-seeds", "43,44"])
    assert args.configs == ["base", "narrow"] and args.student_seeds == [43, 44]


def test_pareto_front_keeps_only_points_no_other_beats_on_both(front):
    points = {
        "base": (0.80, 1.00),
        "narrow": (0.78, 0.77),     # cheaper, worse: on the front
        "batchnorm": (0.78, 1.00),  # as costly as base and worse: off
        "wider": (0.82, 2.50),      # best: on
        "wide": (0.81, 2.60),       # worse and costlier than wider: off
        "tie": (0.80, 1.00),        # equal to base on both: neither beats the other, both stay
        "broken": (math.nan, 0.5),  # no score: left out, and beats nothing
    }
    assert front.pareto_front(points) == ["narrow", "base", "tie", "wider"]
    assert front.pareto_front({}) == []
    assert front.pareto_front({"a": (0.5, 2.0), "b": (0.6, 1.0)}) == ["b"]


def test_pack_respects_the_limit_and_keeps_every_name_once(front):
    sizes = {"a": 6, "b": 5, "c": 4, "d": 12, "e": 1}
    bins = front.pack(sizes, 10)
    assert sorted(n for b in bins for n in b) == sorted(sizes)
    assert all(sum(sizes[n] for n in b) <= 10 or len(b) == 1 for b in bins)
    assert bins == [["a", "c"], ["b", "e"], ["d"]]


def test_timing_ratios_are_medians_of_same_round_ratios(front):
    def row(base_int8, base_fp32, narrow_int8, narrow_fp32):
        cell = lambda ms: {"scan": {"p50_ms": ms}}  # noqa: E731
        return {"base/int8": cell(base_int8), "base/fp32": cell(base_fp32),
                "narrow/int8": cell(narrow_int8), "narrow/fp32": cell(narrow_fp32)}

    # the machine slows down 3x in round 2: ratios within a round do not care
    rounds = [row(10, 20, 5, 10), row(30, 60, 15, 30), row(10, 20, 6, 12)]
    summary = front.timing_summary(rounds, ["scan"])
    assert summary["narrow/int8"]["scan"]["ratio_to_base"] == 0.5
    assert summary["narrow/int8"]["scan"]["p50_ms"] == 6.0
    assert summary["base/int8"]["scan"]["ratio_to_base"] == 1.0
    assert summary["narrow/int8"]["scan"]["int8_speedup"] == 2.0
    assert "int8_speedup" not in summary["narrow/fp32"]["scan"]


def test_seed_summary(front):
    runs = [{"val_dice": d, "val_presence_auc": 0.9, "shift": {"mean_drop": 0.04}} for d in (0.80, 0.82, 0.78)]
    out = front.seed_summary(runs)
    assert out["seeds"] == 3 and out["val_dice"]["mean"] == 0.8 and out["val_dice"]["sd"] == 0.02
    assert front.seed_summary(runs[:1])["val_dice"]["sd"] is None


def test_ensemble_stands_for_the_distill_stages_teacher_checkpoint(front, tmp_path):
    from ultraseg import checkpoint
    from ultraseg.ensemble import Ensemble
    from ultraseg.models.registry import build_model
    from ultraseg.pipeline import distill

    assert distill.checkpoint is checkpoint  # what the script swaps: the stage must still load its teacher through it
    config = {"name": "unet", "widths": [4, 8], "presence": True}
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"t{seed}.pt")
        checkpoint.save(paths[-1], build_model(config), {"model": config, "val": {"dice": 0.5}})
    teacher, meta = front.EnsembleCheckpoints(paths).load("ignored.txt", "cpu")
    assert isinstance(teacher, Ensemble) and not teacher.training
    assert meta["val"]["dice"] is None and meta["members"] == [str(p) for p in paths]
    image = torch.randn(2, 1, 32, 32)
    members = [checkpoint.load(p)[0] for p in paths]
    with torch.no_grad():
        logits, presence = teacher(image)
        want = [m(image) for m in members]
    np.testing.assert_allclose(logits, (want[0][0] + want[1][0]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(presence, (want[0][1] + want[1][1]) / 2, rtol=1e-5, atol=1e-6)
