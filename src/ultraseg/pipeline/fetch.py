"""The fetch stage's work: copy the BUSI source (a folder, a .zip or a URL) into the raw layout with a manifest."""

from __future__ import annotations

from pathlib import Path

from ultraseg.data import busi
from ultraseg.params import FetchParams


def run(params: FetchParams, out_dir: Path, cache_dir: Path) -> list[dict]:
    """The manifest rows of the images written to ``out_dir``; downloads are cached in ``cache_dir``."""
    return busi.fetch(params.source, out_dir, cache_dir, params.sha256)
