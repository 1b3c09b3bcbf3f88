"""DDP (ultraseg.distributed): two gloo processes on the CPU, started by the stage itself through torchrun, train as
one process does; the params refuse what cannot be shared out.

Tolerance. With ``sync_bn`` and the same global batches, two processes differ from one only in the order in which
floating-point sums are taken (gradients averaged over ranks, BatchNorm statistics summed over ranks). The per-epoch
training loss curves must agree to ``RTOL``, set well above that float-order noise and well below the gap opened when
each process normalises with its own half of the batch (no ``sync_bn``), so that a broken ``sync_bn`` is caught.
Those runs train in fp32, whatever the CPU. Under bf16 autocast (where the CPU has it) two processes round other
intermediate values to bf16 than one does, so their curves are held to ``BF16_RTOL``: the check there is that DDP
with ``sync_bn`` trains in bf16 at all, and follows one process to bf16's precision.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY, load_script, tiny_workspace, write_params, shipped, shipped_params
from ultraseg import distributed, precision as precision_mod
from ultraseg.params import ParamsError

RTOL = 1e-5
BF16_RTOL = 5e-3
TRAIN = {"device": "cpu", "precision": "fp32", "threads": 1, "epochs": 3, "batch_size": 4, "lr": 0.01, "warmup_epochs": 0,
         "model": {"widths": TINY, "norm": "batch"}}
"""BatchNorm in the teacher and the student on purpose, whatever params.yaml ships: ``sync_bn`` shares BatchNorm
statistics out, and that sharing is what these tests check. (Under instance norm a tiny network's deepest level is
2×2 at 32 px, normalised over four values each, which magnifies float-order noise beyond what ``RTOL`` is set for:
the instance-norm student's curves drifted apart by 8e-4 once its teacher changed.)"""
DISTILL = {"student": {"widths": TINY, "stem_stride": 1, "norm": "batch"}, "epochs": 2, "baseline": False, "keep": "distilled"}


def stage(name: str):
    return load_script(f"stages/{name}.py")


def params_for(folder: Path, nproc: int, precision: str = "fp32") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_params(folder / "params.yaml", {
        "preprocess": {"size": 32},
        "train": TRAIN | {"precision": precision, "distributed": {"nproc": nproc, "sync_bn": True}},
        "distill": DISTILL,
    })


def loss_curve(live: Path) -> np.ndarray:
    rows = (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    return np.array([float(row.split("\t")[1]) for row in rows])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    """The train and distill stages run with one process and with two; each folder holds both stages' outputs."""
    root = tmp_path_factory.mktemp("ddp")
    data, split = tiny_workspace(root / "workspace", {"benign": 10, "malignant": 8, "normal": 4})
    out = {}
    for nproc in (1, 2):
        folder = root / f"nproc{nproc}"
        common = ["--params", str(params_for(folder, nproc)), "--data", str(data), "--split", str(split)]
        stage("train").main(common + ["--out", str(folder / "teacher.pt"), "--live", str(folder / "train"),
                                      "--resume", str(folder / "resume.pt"), "--metrics", str(folder / "train.json")])
        # both distil the one-process teacher, so the students differ only in how they were trained
        stage("distill").main(common + ["--teacher", str(root / "nproc1" / "teacher.pt"),
                                        "--out", str(folder / "student.pt"), "--live", str(folder / "distill"),
                                        "--baseline-live", str(folder / "baseline"),
                                        "--resume", str(folder / "resume"), "--metrics", str(folder / "distill.json")])
        out[nproc] = folder
    return out


@pytest.mark.parametrize("curve, epochs", [("train", 3), ("distill", 2)])
def test_two_processes_follow_the_one_process_loss_curve(runs, curve, epochs):
    """The teacher, and the student distilled from cached teacher logits (each sample's logits must reach the
    process that trains on that sample, or the distillation term and the curve would differ)."""
    one, two = loss_curve(runs[1] / curve), loss_curve(runs[2] / curve)
    assert len(one) == len(two) == epochs
    assert two == pytest.approx(one, rel=RTOL)
    print(f"{curve}: largest relative difference {np.max(np.abs(two - one) / np.abs(one)):.2e}")


@pytest.mark.skipif(not precision_mod.cpu_has_bf16(precision_mod.cpu_features()),
                    reason="this CPU has no native bf16")
def test_two_processes_train_in_bf16_as_one_does(tmp_path):
    data, split = tiny_workspace(tmp_path / "workspace", {"benign": 10, "malignant": 8, "normal": 4})
    curves = []
    for nproc in (1, 2):
        folder = tmp_path / f"nproc{nproc}"
        stage("train").main(["--params", str(params_for(folder, nproc, "bf16")), "--data", str(data),
                             "--split", str(split), "--out", str(folder / "teacher.pt"), "--live",
                             str(folder / "train"), "--resume", str(folder / "resume.pt"),
                             "--metrics", str(folder / "train.json")])
        curves.append(loss_curve(folder / "train"))
    assert curves[1] == pytest.approx(curves[0], rel=BF16_RTOL)


def test_rank_zero_alone_writes_the_outputs(runs, capfd):
    folder = runs[2]
    for name in ("teacher.pt", "train.json", "student.pt", "distill.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "resume.pt").exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["params.yaml", "teacher.pt", "train.json", "train", "student.pt", "distill.json", "distill", "resume"])


def test_the_shards_of_a_global_batch_make_it_up():
    order = list(np.random.default_rng(0).permutation(23))
    shards = [distributed.shard(order, 6, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [6, 6, 6]  # whole global batches only: every rank takes as many steps
    for k in range(3):  # local batches of 2
        assert sorted(sum((s[2 * k:2 * k + 2] for s in shards), [])) == sorted(order[6 * k:6 * k + 6])
    assert distributed.shard(order, 6, 0, 1) == order[:18]


def test_the_torchrun_options_for_one_node_and_for_several():
    assert distributed.torchrun_options(shipped("train.distributed", nproc=2)) == [
        "--nproc_per_node=2", "--nnodes=1", "--standalone"]
    many = shipped("train.distributed", nproc=8, nnodes=2, rdzv_endpoint="node0:29400")
    assert distributed.torchrun_options(many) == [
        "--nproc_per_node=8", "--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=node0:29400",
        "--rdzv_id=ultraseg"]
    assert not distributed.launched("s.py", [], shipped("train.distributed"))  # one process: no torchrun


def test_a_batch_that_does_not_split_over_the_processes_is_refused_in_one_line(tmp_path, capsys):
    path = write_params(tmp_path / "params.yaml", {"train": {"batch_size": 15, "distributed": {"nproc": 2}}})
    with pytest.raises(SystemExit) as stop:
        stage("train").main(["--params", str(path)])
    assert str(stop.value.code) == (
        f"error: {path}: train.batch_size: expected a multiple of the 2 training processes "
        "(train.distributed: nproc x nnodes), which share each batch equally, got 15")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(("data", "message"), [
    ({"nprocs": 2}, "unknown key train.distributed.nprocs; valid keys here: nproc, nnodes, rdzv_endpoint, rdzv_id, "
                    "backend, sync_bn"),
    ({"nproc": "2"}, "train.distributed.nproc: expected int, got '2'"),
    ({"nproc": 0}, "train.distributed.nproc: expected a positive number, got 0"),
    ({"sync_bn": "yes"}, "train.distributed.sync_bn: expected bool, got 'yes'"),
    ({"backend": "mpi"}, "train.distributed.backend: expected one of 'auto', 'gloo', 'nccl', got 'mpi'"),
    ({"nnodes": 2}, "train.distributed.rdzv_endpoint: expected host:port where the nodes meet (nnodes > 1), got ''"),
    ({"nnodes": 2, "nproc": 4, "rdzv_endpoint": "node0:29400"},
     "train.batch_size: expected a multiple of the 8 training processes (train.distributed: nproc x nnodes), "
     "which share each batch equally, got 4"),
])
def test_params_of_the_distributed_section_are_checked(data, message):
    with pytest.raises(ParamsError, match=f"^{re.escape(message)}$"):
        shipped_params({"train": {"batch_size": 4, "distributed": data}})


def test_distill_and_prune_inherit_the_distributed_section():
    params = shipped_params({"train": {"distributed": {"nproc": 2, "sync_bn": True}}})
    assert params.distill.budget(params.train).distributed == params.train.distributed
    assert shipped_params().train.distributed.world == 1
