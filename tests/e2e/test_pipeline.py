"""The whole pipeline through DVC on 24 real mirror images and a second source of 6, with tiny training settings.

One tiny pipeline is reproduced once per module and its phases are checked by their own tests, in the order they
build on each other: the first ``dvc repro`` and each stage's outputs, a second ``dvc repro`` that runs nothing,
push / clone / pull through a DVC remote, and ``dvc exp run -S`` rerunning only what depends on the changed key. A
failing phase names itself; the phases after it that need its state are skipped with the reason."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import STAGES, build_csv_source, shipped_data
from ultraseg import checkpoint, onnx_io
from ultraseg.variants import VARIANTS as ALL_VARIANTS

PER_CLASS = 8
EXTRA = {"benign": range(9, 12), "malignant": range(9, 10), "normal": range(9, 11)}
"""A second source in the generic CSV layout, JPEG, renamed, without classes: 4 lesion and 2 normal images."""
N_IMAGES = 3 * PER_CLASS + 6
VARIANTS = [v.name for v in ALL_VARIANTS]
# Outputs of the pipeline that a copy of the working tree may carry; removed so that everything really runs.
OUTPUTS = ("dvc.lock", "metrics", "plots", "data", "dvclive", "models", "REPORT.md")


def copy_tree(repo_root: Path, dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the repository (what `git add -A` would commit)."""
    listed = subprocess.run(
        ["git", "-C", str(repo_root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        src = repo_root / name
        if not src.is_file() or name.split("/")[0] in OUTPUTS:
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name)


def tiny_busi(mirror: Path, dest: Path) -> None:
    """The first ``PER_CLASS`` images of every class (in the mirror's own order), with all their masks."""
    for cls in ("benign", "malignant", "normal"):
        (dest / cls).mkdir(parents=True)
        for n in range(1, PER_CLASS + 1):
            for path in mirror.joinpath(cls).glob(f"{cls} ({n})*"):
                shutil.copy2(path, dest / cls / path.name)


def tool_env(repo: Path) -> dict[str, str]:
    """The venv's `python` and `dvc` first on PATH; the copy's own `src` ahead of the editable install."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo / "src")
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"] = "e2e"
        env[f"GIT_{role}_EMAIL"] = "e2e@example.com"
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    return env


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


TINY = {
    "fetch": {"source": "../busi"},
    "preprocess": {"quality_sample": 4, "size": 32},
    "train": {"epochs": 2, "batch_size": 4, "warmup_epochs": 1, "model": {"widths": [4, 8, 16, 32]}},
    # the baseline student and keep: best are off in params.yaml; covered here
    "distill": {"epochs": 1, "baseline": True, "keep": "best",
                # stem stride 2: at the shipped 4, a 32 px input leaves the fourth level 1x1, which per-image
                # normalisation cannot normalise
                "student": {"widths": [8, 16, 32, 64], "stem_stride": 2}},
    "prune": {"steps": 2, "finetune_epochs": 1, "calibration_batches": 2},
    "quantize": {"calibration_images": 8},
    "evaluate": {"bootstrap": 100},
    "benchmark": {"warmup": 1, "runs": 3, "batch": 2, "batch_runs": 1, "retries": 0},
}
"""What the tiny pipeline changes in params.yaml: sizes, widths, epochs and repeats; everything else ships."""


class Workspace:
    """A copy of the repository, set to tiny params and committed, with the tools to run in it."""

    def __init__(self, root: Path, repo_root: Path, mirror: Path) -> None:
        self.repo = root / "repo"
        copy_tree(repo_root, self.repo)
        # the offline page template for `dvc plots show` is built by make setup, not tracked
        shutil.copytree(repo_root / ".dvc" / "plots", self.repo / ".dvc" / "plots")
        assert (self.repo / "dvc.yaml").is_file() and (self.repo / ".dvc").is_dir()
        tiny_busi(mirror, root / "busi")
        self.extra = build_csv_source(mirror, root / "siteB", EXTRA)
        # absolute: DVC's queue runs experiments in a copy of the repository elsewhere
        params = shipped_data(TINY | {"fetch": TINY["fetch"] | {"extra_sources": [str(root / "siteB" / "labels.csv")]}})
        (self.repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        self.dvc = str(Path(sys.executable).parent / "dvc")
        self.run("git", "init", "-q")
        self.commit("tiny pipeline")

    def run(self, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        cwd = cwd or self.repo
        result = subprocess.run(list(args), cwd=cwd, env=tool_env(cwd), capture_output=True, text=True,
                                timeout=1200)
        if check:
            assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
        return result

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)

    def json(self, name: str) -> dict:
        return json.loads((self.repo / name).read_text())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, repo_root, busi_mirror) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("e2e"), repo_root, busi_mirror)


@pytest.fixture(scope="module")
def first_repro(workspace) -> subprocess.CompletedProcess:
    """The one full ``dvc repro`` of the module; checked by test_repro_runs_every_stage."""
    return workspace.run(workspace.dvc, "repro", check=False)


@pytest.fixture(scope="module")
def repro(workspace, first_repro) -> Workspace:
    """The workspace after a successful first repro (the phases that need its outputs are skipped otherwise)."""
    if first_repro.returncode != 0:
        pytest.skip("the first dvc repro failed (see test_repro_runs_every_stage_with_the_copied_code)")
    return workspace


@pytest.fixture(scope="module")
def committed(repro) -> Workspace:
    """The reproduced outputs committed: the baseline `dvc metrics diff` compares against, as a user would commit."""
    repro.commit("tiny pipeline run")
    return repro


# ---------------------------------------------------------------------------------------------------- 1. repro


def test_repro_runs_every_stage_with_the_copied_code(workspace, first_repro):
    assert first_repro.returncode == 0, first_repro.stdout[-4000:] + first_repro.stderr[-4000:]
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first_repro.stdout
    probe = workspace.run("python", "-c", "import ultraseg; print(ultraseg.__file__)")  # the env dvc's stages get
    assert Path(probe.stdout.strip()) == workspace.repo / "src" / "ultraseg" / "__init__.py"
    assert (workspace.repo / "dvc.lock").is_file()


def test_fetch_and_preprocess_outputs(repro):
    manifest = read_rows(repro.repo / "data/raw/manifest.csv")
    assert len(manifest) == N_IMAGES
    assert [r["class"] for r in manifest] == (["benign"] * 8 + ["malignant"] * 8 + ["normal"] * 8
                                              + list(repro.extra.values()))
    assert [r["id"] for r in manifest[24:]] == [f"siteB/{i}" for i in repro.extra]
    assert {r["source"] for r in manifest} == {"busi", "siteB"}
    images = np.load(repro.repo / "data/preprocessed/images.npy")
    masks = np.load(repro.repo / "data/preprocessed/masks.npy")
    assert images.shape == masks.shape == (N_IMAGES, 32, 32) and images.dtype == np.uint8
    assert set(np.unique(masks).tolist()) == {0, 1}
    pre = repro.json("metrics/preprocess.json")
    assert pre["filter"] == "none" and pre["images"] == N_IMAGES and pre["quality_sample"] == 4
    assert pre["enl_ratio"] == 1.0
    assert pre["filters"]["lee"]["enl_ratio"] > 1.0
    assert (repro.repo / "plots/preprocess/filters.png").stat().st_size > 1000


def test_split_keeps_groups_together_and_sources_stratified(repro):
    manifest = read_rows(repro.repo / "data/raw/manifest.csv")
    split_rows = read_rows(repro.repo / "data/split.csv")
    assert list(split_rows[0]) == ["id", "class", "split", "group", "group_size", "conflict"]
    assert [r["id"] for r in split_rows] == [r["id"] for r in manifest]
    assert {r["split"] for r in split_rows} <= {"train", "val", "test"}
    by_group: dict[str, set[str]] = {}
    for r in split_rows:
        by_group.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_group.values())
    split_metrics = repro.json("metrics/split.json")
    assert split_metrics["images"] == N_IMAGES and split_metrics["group_pairs"] == 2  # two patients of two scans
    assert sum(split_metrics["counts"][s]["total"] for s in ("train", "val", "test")) == N_IMAGES
    assert split_metrics["by_source"]["test"]["siteB"] >= 1  # each source is stratified on its own


def test_train_and_distill_outputs(repro):
    train = repro.json("metrics/train.json")
    assert train["epochs_run"] == 2 and 1 <= train["best_epoch"] <= 2
    curve = (repro.repo / "dvclive/train/plots/metrics/val/dice.tsv").read_text().splitlines()
    assert curve[0].split("\t") == ["step", "dice"] and len(curve) == 3
    logged = [float(line.split("\t")[1]) for line in curve[1:]]
    assert train["val_dice"] == round(max(logged), 4) == round(logged[train["best_epoch"] - 1], 4)
    _, meta = checkpoint.load(repro.repo / "models/teacher.pt")
    assert (meta["kind"], meta["size"], meta["normalize"]) == ("teacher", 32, "zscore")
    assert list(meta["model"]["widths"]) == [4, 8, 16, 32]
    assert meta["model"]["norm"] == "instance"  # what params.yaml ships, not a default in code
    distilled = repro.json("metrics/distill.json")
    assert distilled["student"]["epochs_run"] == distilled["baseline"]["epochs_run"] == 1
    assert distilled["kd_gain_val_dice"] == pytest.approx(
        distilled["student"]["val_dice"] - distilled["baseline"]["val_dice"], abs=1e-4)
    assert (repro.repo / "models/student.pt").is_file()
    assert not (repro.repo / "models/.resume/distill/baseline_model.pt").exists()
    # keep: best hands pruning the better of the two on val, and the checkpoint says which it is
    better = "baseline" if distilled["kd_gain_val_dice"] < 0 else "distilled"
    assert distilled["kept"] == better
    assert torch.load(repro.repo / "models/student.pt", weights_only=True)["meta"]["kind"] == (
        "baseline" if better == "baseline" else "student")


def test_prune_export_and_quantize_outputs(repro):
    pruned = repro.json("metrics/prune.json")
    assert pruned["macs_after"] < 0.4 * pruned["macs_before"] and pruned["params_after"] < pruned["params_before"]
    assert pruned["bytes_after"] < pruned["bytes_before"]
    _, meta = checkpoint.load(repro.repo / "models/pruned.pt")
    assert meta["kind"] == "pruned_student"
    assert max(meta["pruned_widths"].values()) == 32  # 64 channels less 50%, a multiple of 4
    exported = repro.json("metrics/export.json")
    assert set(exported) >= {"teacher", "student", "pruned"} and exported["opset"] == 18
    assert exported["pruned"]["bytes"] < exported["student"]["bytes"]
    assert exported["pruned"]["parity_shapes"][0] == "2x1x97x133"
    meta = onnx_io.read_metadata(repro.repo / "models/pruned.int8.onnx")
    assert (meta["kind"], meta["size"], meta["normalize"]) == ("pruned_student", 32, "zscore")
    assert "pruned_widths" in meta and "params_hash" in meta
    quant = repro.json("metrics/quantize.json")
    assert quant["int8_bytes"] < quant["fp32_bytes"] and quant["calibration_images"] == 8
    assert set(quant["latency_p50_ms_1thread"]) == {"int8", "fp32", "teacher_onnx_fp32", "teacher_eager"}


def test_evaluate_deploy_robustness_and_benchmark_outputs(repro):
    split_rows = read_rows(repro.repo / "data/split.csv")
    scores = repro.json("metrics/evaluate.json")
    assert list(scores["variants"]) == VARIANTS + ["deployed", "accurate"] and scores["split"] == "test"
    n_test = sum(r["split"] == "test" for r in split_rows)
    assert scores["n_images"] == n_test
    assert len(read_rows(repro.repo / "results/evaluate/cases.csv")) == n_test * (len(VARIANTS) + 2)
    deployed = repro.json("metrics/deploy.json")
    assert scores["variants"]["deployed"]["postprocess"] == deployed["postprocess"]
    accurate = repro.json("metrics/deploy_accurate.json")  # the accurate profile: the teacher, deployed alike
    assert scores["variants"]["accurate"]["postprocess"] == accurate["postprocess"]
    assert accurate["file"].endswith("ultraseg.accurate.onnx")
    assert accurate["ood"]["val_pass"] >= accurate["ood"]["val_pass_target"]
    per_source = scores["variants"]["deployed"]["by_source"]
    assert set(per_source) == {"busi", "siteB"}
    assert per_source["busi"]["n_lesion"] + per_source["siteB"]["n_lesion"] == \
        scores["variants"]["deployed"]["n_lesion"]
    robust = repro.json("metrics/robustness.json")
    assert set(robust["models"]) == {"teacher", "deployed", "accurate"} and robust["n_images"] == n_test
    assert robust["stream"]["deployed"]["stream"] == deployed["stream"]
    assert robust["stream"]["deployed"]["smoothed"]["flips_per_100"] <= \
        robust["stream"]["deployed"]["per_frame"]["flips_per_100"]
    assert robust["ood"]["checked"] and robust["ood"]["scans"]["images"] == n_test
    assert deployed["ood"]["val_pass"] >= deployed["ood"]["val_pass_target"]
    for name in ("dice_distribution", "threshold_curve", "samples"):
        assert (repro.repo / f"plots/evaluate/{name}.png").stat().st_size > 1000
    bench = repro.json("metrics/benchmark.json")
    assert list(bench["variants"]) == VARIANTS and bench["input"] == [1, 1, 32, 32]
    assert set(bench["variants"]["pruned_int8"]) >= {"threads_1", "threads_all", "peak_rss_mb", "gmacs"}
    assert bench["variants"]["pruned_int8"]["gmacs"] < bench["variants"]["teacher"]["gmacs"]
    end = bench["end_to_end"]
    assert end["torch_loaded"] is False  # the runtime's memory is measured without PyTorch
    assert 0 < end["peak_rss_mb"] < 300 and bench["settings"]["memory_goal_mb"] == 150
    steps = bench["training_steps"]
    assert set(steps) == {"cpu_features", "bf16_supported", "teacher", "student"}
    assert all(steps[n]["fp32_ms"] > 0 and (steps[n]["bf16_ms"] is None) == (not steps["bf16_supported"])
               for n in ("teacher", "student"))
    assert set(end["frames"]) == set(bench["end_to_end_accurate"]["frames"]) == {"scan", "scanner_640x480"}
    assert end["frames"]["scanner_640x480"]["frame_hw"] == [480, 640]
    seed = bench["seed_unet"]
    assert seed["model"]["widths"] == [64, 128, 256, 512] and seed["p50_ms"] > 0
    assert bench["speedup_end_to_end_vs_seed_unet"] == round(seed["p50_ms"] / end["frames"]["scan"]["p50_ms"], 1)
    rows = (repro.repo / "plots/benchmark/tradeoff.csv").read_text().splitlines()
    assert rows[0] == "variant,latency_ms,test_dice,file_mb" and len(rows) == 1 + len(VARIANTS)
    for name in ("tradeoff.png", "size_latency.png"):
        assert (repro.repo / "plots/benchmark" / name).read_bytes()[:4] == b"\x89PNG"


def test_report_quotes_the_stage_outputs(repro):
    report = (repro.repo / "REPORT.md").read_text()
    scores, train, quant = (repro.json(f"metrics/{name}.json") for name in ("evaluate", "train", "quantize"))
    assert "## Test results" in report and "## Speed, size and memory" in report
    assert "## The deployable file" in report and "## Scanner shifts" in report
    assert f"| teacher | {scores['variants']['teacher']['dice']:.4f} [" in report
    assert "## Dataset and duplicates" in report and "## Teacher training" in report
    assert f"| {train['val_dice']:.4f} |" in report and "## Optimisation" in report
    assert f"| {quant['val_dice_int8']:.4f} |" in report


def test_plots_show_renders_offline(repro):
    out = repro.repo.parent / "plots_html"
    plots = repro.run(repro.dvc, "plots", "show", "-o", str(out))
    assert (out / "index.html").stat().st_size > 1000, plots.stdout


# ---------------------------------------------------------------------------------------------------- 2. no-op


def test_second_repro_runs_nothing(repro):
    second = repro.run(repro.dvc, "repro")
    assert "Running stage" not in second.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in second.stdout
    assert "Data and pipelines are up to date." in repro.run(repro.dvc, "status").stdout


# ---------------------------------------------------------------------------------------------------- 3. remote


def test_a_clone_pulls_the_outputs_and_has_nothing_to_rerun(committed):
    repo = committed.repo
    committed.run(committed.dvc, "remote", "add", "-d", "team", str(repo.parent / "remote"))
    committed.run("git", "commit", "-q", "-am", "a shared remote")
    committed.run(committed.dvc, "push")
    clone = repo.parent / "clone"  # beside the repo, so the relative fetch.source resolves the same
    committed.run("git", "clone", "-q", str(repo), str(clone))
    shutil.copytree(repo / ".dvc" / "plots", clone / ".dvc" / "plots")  # what make setup builds in a clone
    committed.run(committed.dvc, "pull", cwd=clone)
    status = committed.run(committed.dvc, "status", cwd=clone)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout + status.stderr
    deployable = "models/deploy/ultraseg.int8.onnx"
    assert (clone / deployable).read_bytes() == (repo / deployable).read_bytes()


# ---------------------------------------------------------------------------------------------------- 4. exp run -S


def test_exp_run_reruns_only_what_depends_on_the_changed_key(committed):
    """`dvc exp run -S evaluate.seed=1` reruns the stages that read that key and those fed by their outputs; the
    data, the trained models and the deployable file are untouched. (A late key, so the check costs a few stages
    rather than a second pipeline; last: it changes the workspace the phases above read.)"""
    repo = committed.repo
    kept = ("data/split.csv", "data/preprocessed/images.npy", "models/teacher.pt", "models/pruned.int8.onnx",
            "models/deploy/ultraseg.int8.onnx")
    before = {name: (repo / name).read_bytes() for name in kept}
    rerun = committed.run(committed.dvc, "exp", "run", "-S", "evaluate.seed=1").stdout
    for stage in ("evaluate", "robustness", "external", "benchmark", "report"):
        assert f"Running stage '{stage}'" in rerun
    for stage in ("fetch", "split", "preprocess", "train", "distill", "prune_finetune", "export", "quantize",
                  "deploy"):
        assert f"Running stage '{stage}'" not in rerun
    assert {name: (repo / name).read_bytes() for name in kept} == before
    changed = json.loads(committed.run(committed.dvc, "params", "diff", "--json").stdout)
    assert changed == {"params.yaml": {"evaluate.seed": {"old": 0, "new": 1, "diff": 1}}}


# ---------------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_seed_grid_through_the_queue(tmp_path, repo_root, busi_mirror):
    """The seed grid of scripts/experiments.py, queued and run by DVC's queue with two workers, then collected with
    its spread (slow: two more pipelines; the tiny run above already covers every stage)."""
    own = Workspace(tmp_path, repo_root, busi_mirror)
    own.run(own.dvc, "repro")
    own.commit("tiny pipeline run")
    grid = own.run(sys.executable, "scripts/experiments.py", "--grid", "seeds", "--run", "--collect", "--seeds", "1",
                   "2", "--jobs", "2", "--source", str(tmp_path / "busi"))
    seeds = own.json("experiments/seeds.json")
    assert seeds["n"] == 3 and seeds["missing"] == [], grid.stdout + grid.stderr
    teacher = [r["teacher_val"] for r in seeds["runs"].values()]
    assert len(set(teacher)) > 1  # another training seed trains another teacher
    assert seeds["summary"]["teacher_val"]["mean"] == pytest.approx(np.mean(teacher))
    assert seeds["summary"]["teacher_val"]["sd"] == pytest.approx(np.std(teacher, ddof=1))
