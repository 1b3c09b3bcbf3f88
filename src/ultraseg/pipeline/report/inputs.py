"""What the report reads: the metrics files the stages wrote, each required, and the optional experiment results."""

from __future__ import annotations

import json
from pathlib import Path


class ReportError(RuntimeError):
    pass


def load(path: Path) -> dict:
    if not path.exists():
        raise ReportError(f"{path}: metrics file missing; run the stage that writes it (dvc repro)")
    return json.loads(path.read_text())


def load_optional(path: Path | None) -> dict | None:
    """The JSON at ``path`` when there is one: experiment results are written by hand-run scripts, not stages."""
    return load(path) if path is not None and path.exists() else None
