"""README's experiment-comparison recipe fits on one screen: `dvc exp show` with its --drop/--keep keeps the
headline columns and stays within 15 columns, and `dvc metrics diff --targets` reads the headline file."""

from __future__ import annotations

import csv
import io
import re
import shlex
import subprocess
import sys

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


def test_metrics_diff_recipe_targets_the_headline_file():
    args = recipe("dvc metrics diff --targets")
    assert args[-1] == "metrics/headline.json" and (REPO_ROOT / args[-1]).is_file()
    out = subprocess.run([sys.executable, "-m", *args, "--json"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"\{.*\}\s*", out.stdout, re.S)
