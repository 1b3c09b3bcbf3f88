"""PNG figures for the stages: a headless matplotlib, and saving that never leaves a half-written file.

PNG rather than only DVC's plot data because `dvc plots show` loads its chart library from the internet, and users
offline must still see the figures (REPORT.md embeds them).
"""

from __future__ import annotations

from pathlib import Path

from ultraseg.io import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, imported on first use (a stage that draws nothing never pays)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` as PNG atomically; free it whether or not that worked."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)
