"""scripts/epoch_profile.py: one epoch of each network split into data, step and validation, fp32 beside bf16
where the CPU has it, and bad arguments or missing inputs refused in one line."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, load_script, shipped_params, tiny_workspace
from ultraseg import precision as precision_mod

SIZE = 32
PARAMS = {"preprocess": {"size": SIZE},
          "train": {"threads": 1, "batch_size": 4, "model": {"widths": TINY}},
          "distill": {"student": {"widths": TINY}}}


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/epoch_profile.py")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tiny_workspace(tmp_path_factory.mktemp("epochs"), {"benign": 8, "malignant": 7, "normal": 5}, SIZE)


def test_each_network_and_precision_gets_its_parts_and_the_ratio(script, workspace):
    data, split = workspace
    out = script.run(shipped_params(PARAMS), data, split, ["teacher", "student"], batches=2, rounds=2, warmup=0)
    bf16 = precision_mod.cpu_has_bf16(precision_mod.cpu_features())
    assert out["bf16_supported"] == bf16 and out["threads"] == 1 and out["size"] == SIZE
    for name in ("teacher", "student"):
        m = out["models"][name]
        assert m["batches"] == 2 and m["batches_per_epoch"] == out["train_images"] // 4
        for precision in ("fp32", "bf16") if bf16 else ("fp32",):
            e = m[precision]
            assert len(e["rounds"]) == 2  # the parts are medians over the rounds
            assert all(e[f"{p}_s"] >= 0 for p in script.PARTS) and e["step_s"] > 0
            assert sum(e["shares"].values()) == pytest.approx(1.0, abs=0.01)
            # two of the epoch's batches timed: the projection scales the training part to the whole epoch
            assert e["full_epoch_s"] >= e["epoch_s"] - 1e-3
        assert (m["fp32_over_bf16"] is None) == (not bf16)
        if bf16:
            assert m["fp32_over_bf16"]["step"] == pytest.approx(m["fp32"]["step_s"] / m["bf16"]["step_s"], rel=0.01)
    json.dumps(out, allow_nan=False)


def test_more_batches_than_an_epoch_holds_are_refused_naming_the_flag(script, workspace):
    data, split = workspace
    with pytest.raises(script.ParamsError, match=r"^--batches 99: an epoch of teacher has only \d+ batches$"):
        script.run(shipped_params(PARAMS), data, split, ["teacher"], batches=99, rounds=1, warmup=0)


def test_missing_inputs_and_bad_flags_exit_in_one_line(script, tmp_path, capsys):
    with pytest.raises(SystemExit, match=rf"^error: {tmp_path / 'nothing'}: no preprocessed data"):
        script.main(["--data", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit):
        script.main(["--batches", "0"])
    assert "--batches must be at least 1" in capsys.readouterr().err
