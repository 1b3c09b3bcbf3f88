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


def overlay(image, ref, pred):
    """RGB float image in [0, 1]: the grey scan with hits green, false positives red and missed lesion blue."""
    import numpy as np

    out = np.stack([image] * 3, axis=-1).astype(np.float32) / 255
    false_positive, missed, hit = pred & ~ref, ref & ~pred, ref & pred
    for where, colour in ((false_positive, (1.0, 0.2, 0.2)), (missed, (0.2, 0.4, 1.0)), (hit, (0.2, 1.0, 0.2))):
        out[where] = 0.6 * out[where] + 0.4 * np.array(colour)
    return out


def pick_cases(dice, pred_pixels, ref_pixels, normals: int = 2) -> dict[str, int]:
    """Row labels to case indices: the best, median and worst lesion cases by ``dice``, then the normal case with
    the largest false alarm and the median normal case (``normals`` of them at most)."""
    lesion = [k for k, n in enumerate(ref_pixels) if n > 0]
    if not lesion:
        raise ValueError("no lesion case to show")
    order = sorted(lesion, key=lambda k: dice[k])
    picks = {"best": order[-1], "median": order[len(order) // 2], "worst": order[0]}
    normal = sorted((k for k, n in enumerate(ref_pixels) if n == 0), key=lambda k: -pred_pixels[k])
    for label, k in list(zip(("normal, most false alarm", "normal, median"), (0, len(normal) // 2)))[:normals]:
        if normal and normal[k] not in picks.values():
            picks[label] = normal[k]
    return picks


def cases_figure(images, refs, ids, preds: dict, rows: dict, title: str, path: Path, normals: int = 2) -> None:
    """A grid of chosen cases (:func:`pick_cases` on the first model's rows): the image, then each model's
    :func:`overlay`. ``preds`` and ``rows`` map a model's label to its masks and its per-case metric rows (with
    ``dice``, ``pred_pixels`` and ``ref_pixels``), in the order of ``images``."""
    plt = pyplot()
    first = rows[next(iter(rows))]
    picks = pick_cases([r["dice"] for r in first], [r["pred_pixels"] for r in first],
                       [r["ref_pixels"] for r in first], normals)
    fig, axes = plt.subplots(len(picks), 1 + len(preds), figsize=(2.9 * (1 + len(preds)), 2.7 * len(picks)),
                             squeeze=False)
    for r, (label, k) in enumerate(picks.items()):
        panels = [(images[k], "image")] + [(overlay(images[k], refs[k], p[k]), name) for name, p in preds.items()]
        for c, (array, name) in enumerate(panels):
            axes[r, c].imshow(array, cmap="gray", vmin=0, vmax=255 if array.dtype.kind == "u" else 1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            axes[0, c].set_title(name, fontsize=9)
            if c:
                case = rows[name][k]
                score = f"Dice {case['dice']:.3f}" if case["ref_pixels"] else f"{case['pred_pixels']} px predicted"
                axes[r, c].set_xlabel(score, fontsize=8)
        axes[r, 0].set_ylabel(f"{label}\n{ids[k]}", fontsize=8)
    fig.suptitle(title + "\noverlay: green hit, red false positive, blue missed", fontsize=9)
    fig.tight_layout()
    save(fig, path)
