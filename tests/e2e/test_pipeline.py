"""The whole pipeline through DVC on 24 real mirror images and a second source of 6, with tiny training settings:
it runs, skips what did not change, and reruns only what did."""

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

from tests.conftest import STAGES, build_csv_source
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


@pytest.fixture
def pipeline(tmp_path, repo_root, busi_mirror):
    repo = tmp_path / "repo"
    copy_tree(repo_root, repo)
    # the offline page template for `dvc plots show` is built by make setup, not tracked
    shutil.copytree(repo_root / ".dvc" / "plots", repo / ".dvc" / "plots")
    assert (repo / "dvc.yaml").is_file() and (repo / "params.yaml").is_file() and (repo / ".dvc").is_dir()
    tiny_busi(busi_mirror, tmp_path / "busi")
    extra = build_csv_source(busi_mirror, tmp_path / "siteB", EXTRA)


    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["fetch"]["source"] = "../busi"
    # absolute: DVC's queue runs experiments in a copy of the repository elsewhere
    params["fetch"]["extra_sources"] = [str(tmp_path / "siteB" / "labels.csv")]
    params["preprocess"]["quality_sample"] = 4
    params["preprocess"]["size"] = 32
    params["train"].update(epochs=2, batch_size=4, warmup_epochs=1)
    params["train"]["model"]["widths"] = [4, 8, 16, 32]
    params["distill"].update(epochs=1, baseline=True, keep="best")  # off by default; covered here
    # stem stride 2: at the default 4, a 32 px input leaves the fourth level 1x1, which per-image normalisation
    # cannot normalise
    params["distill"]["student"].update(widths=[8, 16, 32, 64], stem_stride=2)
    params["prune"].update(steps=2, finetune_epochs=1, calibration_batches=2)
    params["quantize"].update(calibration_images=8)
    params["evaluate"].update(bootstrap=100)
    params["benchmark"].update(warmup=1, runs=3, batch=2, batch_runs=1, retries=0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = tool_env(repo)
    dvc = str(Path(sys.executable).parent / "dvc")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
        if check:
            assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
        return result

    run("git", "init", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=e2e", "-c", "user.email=e2e@example.com", "commit", "-q", "-m", "tiny pipeline")
    return repo, run, dvc, extra


def test_pipeline_end_to_end(pipeline):
    repo, run, dvc, extra = pipeline

    # 1. everything runs, with the copied code
    first = run(dvc, "repro")
    probe = run("python", "-c", "import ultraseg; print(ultraseg.__file__)")
    assert Path(probe.stdout.strip()) == repo / "src" / "ultraseg" / "__init__.py"
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    manifest = read_rows(repo / "data/raw/manifest.csv")
    assert len(manifest) == N_IMAGES
    assert [r["class"] for r in manifest] == ["benign"] * 8 + ["malignant"] * 8 + ["normal"] * 8 + list(extra.values())
    assert [r["id"] for r in manifest[24:]] == [f"siteB/{i}" for i in extra]
    assert {r["source"] for r in manifest} == {"busi", "siteB"}
    images = np.load(repo / "data/preprocessed/images.npy")
    masks = np.load(repo / "data/preprocessed/masks.npy")
    assert images.shape == masks.shape == (N_IMAGES, 32, 32) and images.dtype == np.uint8
    assert set(np.unique(masks).tolist()) == {0, 1}

    split_rows = read_rows(repo / "data/split.csv")
    assert list(split_rows[0]) == ["id", "class", "split", "group", "group_size", "conflict"]
    assert [r["id"] for r in split_rows] == [r["id"] for r in manifest]
    assert {r["split"] for r in split_rows} <= {"train", "val", "test"}
    by_group: dict[str, set[str]] = {}
    for r in split_rows:
        by_group.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_group.values())

    pre = json.loads((repo / "metrics/preprocess.json").read_text())
    assert pre["filter"] == "none" and pre["images"] == N_IMAGES and pre["quality_sample"] == 4
    assert pre["enl_ratio"] == 1.0
    assert pre["filters"]["lee"]["enl_ratio"] > 1.0
    split_metrics = json.loads((repo / "metrics/split.json").read_text())
    assert split_metrics["images"] == N_IMAGES and split_metrics["group_pairs"] == 2  # two patients of two scans
    assert sum(split_metrics["counts"][s]["total"] for s in ("train", "val", "test")) == N_IMAGES
    assert split_metrics["by_source"]["test"]["siteB"] >= 1  # each source is stratified on its own
    assert (repo / "plots/preprocess/filters.png").stat().st_size > 1000
    assert (repo / "dvc.lock").is_file()

    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["epochs_run"] == 2 and 1 <= train["best_epoch"] <= 2
    curve = (repo / "dvclive/train/plots/metrics/val/dice.tsv").read_text().splitlines()
    assert curve[0].split("\t") == ["step", "dice"] and len(curve) == 3
    logged = [float(line.split("\t")[1]) for line in curve[1:]]
    assert train["val_dice"] == round(max(logged), 4) == round(logged[train["best_epoch"] - 1], 4)
    probe = run("python", "-c", "from ultraseg import checkpoint; m, meta = checkpoint.load('models/teacher.pt'); "
                "print(meta['kind'], meta['size'], meta['normalize'], meta['model']['widths'])")
    assert probe.stdout.split() == ["teacher", "32", "zscore", "[4,", "8,", "16,", "32]"]
    distilled = json.loads((repo / "metrics/distill.json").read_text())
    assert distilled["student"]["epochs_run"] == distilled["baseline"]["epochs_run"] == 1
    assert distilled["kd_gain_val_dice"] == pytest.approx(
        distilled["student"]["val_dice"] - distilled["baseline"]["val_dice"], abs=1e-4)
    assert (repo / "models/student.pt").is_file() and not (repo / "models/.resume/distill/baseline_model.pt").exists()
    # keep: best hands pruning the better of the two on val, and the checkpoint says which it is
    better = "baseline" if distilled["kd_gain_val_dice"] < 0 else "distilled"
    assert distilled["kept"] == better
    assert torch.load(repo / "models/student.pt", weights_only=True)["meta"]["kind"] == (
        "baseline" if better == "baseline" else "student")
    pruned = json.loads((repo / "metrics/prune.json").read_text())
    assert pruned["macs_after"] < 0.4 * pruned["macs_before"] and pruned["params_after"] < pruned["params_before"]
    assert pruned["bytes_after"] < pruned["bytes_before"]
    probe = run("python", "-c", "from ultraseg import checkpoint; m, meta = checkpoint.load('models/pruned.pt'); "
                "print(meta['kind'], max(meta['pruned_widths'].values()))")
    assert probe.stdout.split() == ["pruned_student", "32"]  # 64 channels less 50%, a multiple of 4
    exported = json.loads((repo / "metrics/export.json").read_text())
    assert set(exported) >= {"teacher", "student", "pruned"} and exported["opset"] == 18
    assert exported["pruned"]["bytes"] < exported["student"]["bytes"]
    assert exported["pruned"]["parity_shapes"][0] == "2x1x97x133"
    probe = run("python", "-c", "from ultraseg import onnx_io; m = onnx_io.read_metadata('models/pruned.int8.onnx'); "
                "print(m['kind'], m['size'], m['normalize'], 'pruned_widths' in m, 'params_hash' in m)")
    assert probe.stdout.split() == ["pruned_student", "32", "zscore", "True", "True"]
    quant = json.loads((repo / "metrics/quantize.json").read_text())
    assert quant["int8_bytes"] < quant["fp32_bytes"] and quant["calibration_images"] == 8
    assert set(quant["latency_p50_ms_1thread"]) == {"int8", "fp32", "teacher_onnx_fp32", "teacher_eager"}
    scores = json.loads((repo / "metrics/evaluate.json").read_text())
    assert list(scores["variants"]) == VARIANTS + ["deployed"] and scores["split"] == "test"
    n_test = sum(r["split"] == "test" for r in split_rows)
    assert scores["n_images"] == n_test
    assert len(read_rows(repo / "results/evaluate/cases.csv")) == n_test * (len(VARIANTS) + 1)
    deployed = json.loads((repo / "metrics/deploy.json").read_text())
    assert scores["variants"]["deployed"]["postprocess"] == deployed["postprocess"]
    per_source = scores["variants"]["deployed"]["by_source"]
    assert set(per_source) == {"busi", "siteB"}
    assert per_source["busi"]["n_lesion"] + per_source["siteB"]["n_lesion"] == scores["variants"]["deployed"]["n_lesion"]
    robust = json.loads((repo / "metrics/robustness.json").read_text())
    assert set(robust["models"]) == {"teacher", "deployed"} and robust["n_images"] == n_test
    for name in ("dice_distribution", "threshold_curve", "samples"):
        assert (repo / f"plots/evaluate/{name}.png").stat().st_size > 1000
    bench = json.loads((repo / "metrics/benchmark.json").read_text())
    assert list(bench["variants"]) == VARIANTS and bench["input"] == [1, 1, 32, 32]
    assert bench["end_to_end"]["torch_loaded"] is False and bench["seed_unet"]["p50_ms"] > 0
    assert set(bench["variants"]["pruned_int8"]) >= {"threads_1", "threads_all", "peak_rss_mb", "gmacs"}
    assert bench["variants"]["pruned_int8"]["gmacs"] < bench["variants"]["teacher"]["gmacs"]
    report = (repo / "REPORT.md").read_text()
    assert "## Test results" in report and "## Speed, size and memory" in report
    assert "## The deployable file" in report and "## Scanner shifts" in report
    assert f"| teacher | {scores['variants']['teacher']['dice']:.4f} [" in report
    assert "## Dataset and duplicates" in report and "## Teacher training" in report
    assert f"| {train['val_dice']:.4f} |" in report and "## Optimisation" in report
    assert f"| {quant['val_dice_int8']:.4f} |" in report
    plots = run(dvc, "plots", "show", "-o", str(repo.parent / "plots_html"))
    assert (repo.parent / "plots_html" / "index.html").stat().st_size > 1000, plots.stdout

    # 2. nothing changed: nothing runs
    split_before = (repo / "data/split.csv").read_bytes()
    duplicates_before = (repo / "data/duplicates.csv").read_bytes()
    second = run(dvc, "repro")
    assert "Running stage" not in second.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in second.stdout
    status = run(dvc, "status")
    assert "Data and pipelines are up to date." in status.stdout

    run("git", "add", "-A")  # the baseline that `dvc metrics diff` compares against, as a user would commit it
    run("git", "commit", "-q", "-m", "tiny pipeline run")

    # 3. shared through a DVC remote: a colleague's clone pulls the outputs and has nothing to rerun
    remote = repo.parent / "remote"
    run(dvc, "remote", "add", "-d", "team", str(remote))
    run("git", "commit", "-q", "-am", "a shared remote")
    run(dvc, "push")
    clone = repo.parent / "clone"  # beside the repo, so the relative fetch.source resolves the same
    run("git", "clone", "-q", str(repo), str(clone))
    shutil.copytree(repo / ".dvc" / "plots", clone / ".dvc" / "plots")  # what make setup builds in a clone
    pulled = subprocess.run([dvc, "pull"], cwd=clone, env=tool_env(clone), capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    status = subprocess.run([dvc, "status"], cwd=clone, env=tool_env(clone), capture_output=True, text=True)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout + status.stderr
    assert (clone / "models/deploy/ultraseg.int8.onnx").read_bytes() == \
        (repo / "models/deploy/ultraseg.int8.onnx").read_bytes()

    # 4. another filter reruns preprocess and what depends on it; the data and the split are untouched
    third = run(dvc, "exp", "run", "-S", "preprocess.filter=lee")
    for stage in ("preprocess", "train", "distill", "prune_finetune", "export", "quantize", "evaluate", "benchmark",
                  "report"):
        assert f"Running stage '{stage}'" in third.stdout
    changed = json.loads(run(dvc, "metrics", "diff", "--json").stdout)
    assert {f"metrics/{name}.json" for name in ("preprocess", "train", "distill", "prune", "quantize", "evaluate",
                                                "benchmark")} <= set(changed)
    assert "Running stage 'fetch'" not in third.stdout
    assert "Running stage 'split'" not in third.stdout
    pre_lee = json.loads((repo / "metrics/preprocess.json").read_text())
    assert pre_lee["filter"] == "lee"
    assert pre_lee["enl_ratio"] == pre_lee["filters"]["lee"]["enl_ratio"] > 1.0
    assert yaml.safe_load((repo / "params.yaml").read_text())["preprocess"]["filter"] == "lee"
    assert not np.array_equal(np.load(repo / "data/preprocessed/images.npy"), images)
    assert (repo / "data/split.csv").read_bytes() == split_before
    assert (repo / "data/duplicates.csv").read_bytes() == duplicates_before


@pytest.mark.slow
def test_seed_grid_through_the_queue(pipeline):
    """The seed grid of scripts/experiments.py, queued and run by DVC's queue with two workers, then collected with
    its spread (slow: two more pipelines; the tiny run above already covers every stage)."""
    repo, run, dvc, _ = pipeline
    run(dvc, "repro")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "tiny pipeline run")
    grid = run(sys.executable, "scripts/experiments.py", "--grid", "seeds", "--run", "--collect", "--seeds", "1", "2",
               "--jobs", "2", "--source", str(repo.parent / "busi"))
    seeds = json.loads((repo / "experiments/seeds.json").read_text())
    assert seeds["n"] == 3 and seeds["missing"] == [], grid.stdout + grid.stderr
    teacher = [r["teacher_val"] for r in seeds["runs"].values()]
    assert len(set(teacher)) > 1  # another training seed trains another teacher
    assert seeds["summary"]["teacher_val"]["mean"] == pytest.approx(np.mean(teacher))
    assert seeds["summary"]["teacher_val"]["sd"] == pytest.approx(np.std(teacher, ddof=1))

