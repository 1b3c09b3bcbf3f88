"""README's experiment-comparison recipe fits on one screen: `dvc exp show` with its --drop/--keep keeps the
headline columns and stays within 15 columns, and `dvc metrics diff --targets` reads the headline file."""

from __future__ import annotations

import csv
import io
import json
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def recipe(command: str) -> list[str]:
    """The README line that starts with ``command``, as arguments (its trailing comment dropped)."""
    readme = (REPO_ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith(command))
    return shlex.split(line, comments=True)


def test_exp_show_recipe_keeps_the_headline_in_at_most_15_columns():
    args = recipe("dvc exp show --drop")
    out = subprocess.run([sys.executable, "-m", *args, "--csv", "--no-pager"], cwd=REPO_ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    header = next(csv.reader(io.StringIO(out.stdout)))
    headline = [c for c in header if c.startswith("headline.")]
    assert len(headline) >= 10, header  # the committed metrics/headline.json is there
    assert len(header) <= 15, header


def test_metrics_diff_recipe_shows_a_changed_headline_number(tmp_path):
    """The recipe run in a small repository holding the committed headline file, with one number changed in the
    workspace: the diff names that key with its committed and its new value, and nothing else."""
    args = recipe("dvc metrics diff --targets")
    target = args[-1]
    assert target == "metrics/headline.json"
    committed = json.loads((REPO_ROOT / target).read_text())
    (tmp_path / "metrics").mkdir()
    (tmp_path / target).write_text(json.dumps(committed))

    def run(*command: str) -> str:
        out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "headline")
    old = committed["headline"]["deployed"]
    changed = committed | {"headline": {**committed["headline"], "deployed": round(old + 0.01, 4)}}
    (tmp_path / target).write_text(json.dumps(changed))
    diff = json.loads(run(sys.executable, "-m", *args, "--json"))
    change = {"old": old, "new": round(old + 0.01, 4), "diff": pytest.approx(0.01)}
    assert diff == {target: {"headline.deployed": change}}
