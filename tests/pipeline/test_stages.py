"""Stage scripts: `--help` explains the stage; bad params or data end the process with one clear line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest

from tests.conftest import SCRIPTS, load_script


def run_stage(repo_root, stage: str, *args: str, cwd) -> subprocess.CompletedProcess:
    """The stage's ``main(argv)`` run in this process from ``cwd``, with what its command line would print and
    return: a subprocess per call would only add an interpreter start and PyTorch's import."""
    main = load_script(repo_root / "stages" / f"{stage}.py").main
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main(list(args))
                code = 0
            except SystemExit as exit:  # as the interpreter ends: a message goes to stderr with status 1
                code = exit.code if isinstance(exit.code, int) or exit.code is None else 1
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(args, code or 0, out.getvalue(), err.getvalue())


def summary(repo_root, stage: str) -> str:
    """The first line of the stage script's docstring."""
    source = (repo_root / "stages" / f"{stage}.py").read_text()
    return source.split('"""')[1].strip().splitlines()[0]


@pytest.mark.parametrize("stage", SCRIPTS)
def test_help_shows_docstring_summary(repo_root, tmp_path, stage):
    result = run_stage(repo_root, stage, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = summary(repo_root, stage)
    assert line.startswith(f"{stage}: ")
    assert line in result.stdout
    assert "--params" in result.stdout
    assert list(tmp_path.iterdir()) == []  # --help writes nothing


@pytest.mark.parametrize("stage", SCRIPTS)
def test_unknown_param_key_fails_with_one_line(repo_root, tmp_path, stage, params_file):
    params_file(tmp_path / "params.yaml", {"preprocess": {"clahe": {"clipp": 2.0}}})
    result = run_stage(repo_root, stage, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: unknown key preprocess.clahe.clipp; valid keys here: enabled, clip, tiles"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_wrong_type_via_params_option(repo_root, tmp_path, params_file):
    params_file(tmp_path / "p.yaml", {"split": {"fractions": {"train": "abc"}}})
    result = run_stage(repo_root, "split", "--params", "p.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: p.yaml: split.fractions.train: expected float, got 'abc'"


def test_missing_params_file(repo_root, tmp_path):
    result = run_stage(repo_root, "fetch", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: params.yaml: params file not found"


def test_data_error_fails_with_one_line(repo_root, tmp_path, params_file):
    params_file(tmp_path / "params.yaml", {"fetch": {"source": "no/such/folder"}})
    result = run_stage(repo_root, "fetch", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no/such/folder: fetch.source does not exist (a directory, a .zip or an http(s) URL)"]
    assert "Traceback" not in result.stderr


def test_fetch_stage_writes_its_outputs(repo_root, tmp_path, make_busi, params_file):
    fake = make_busi(tmp_path / "busi", layout="mirror")
    work = tmp_path / "work"
    work.mkdir()
    params_file(work / "params.yaml", {"fetch": {"source": str(fake.root)}})
    result = run_stage(repo_root, "fetch", "--out", "out/raw", cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fetch: 7 images from {fake.root} -> out/raw"
    assert len((work / "out" / "raw" / "manifest.csv").read_text().splitlines()) == 1 + 7


@pytest.mark.parametrize("stage", ["fetch", "report"])
def test_light_stages_load_no_framework(repo_root, stage):
    """Copying files and rendering markdown must not pay for PyTorch or ONNX Runtime: with those unimportable, the
    stage script still loads."""
    code = ("import sys, importlib.util\n"
            "for name in ('torch', 'onnx', 'onnxruntime', 'torch_pruning'): sys.modules[name] = None\n"
            f"spec = importlib.util.spec_from_file_location('stage', {str(repo_root / 'stages' / f'{stage}.py')!r})\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
