"""The preprocess stage's work: every fetched image through :func:`ultraseg.runtime.preprocess.preprocess`, and a
comparison of every speckle filter on a fixed sample of train-split lesion images."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ultraseg.data import busi, quality
from ultraseg.io import atomic_path
from ultraseg.params import PreprocessParams
from ultraseg.runtime import filters
from ultraseg.runtime.preprocess import preprocess, resize_mask

INDEX_COLUMNS = ("row", "id", "class", "width", "height")


def run(raw_dir: Path, out_dir: Path, params: PreprocessParams) -> dict:
    """Preprocess every image of the fetch stage's output into ``out_dir``; return the timing."""
    manifest = busi.read_manifest(raw_dir / "manifest.csv")
    size = params.size
    images = np.zeros((len(manifest), size, size), np.uint8)
    masks = np.zeros((len(manifest), size, size), np.uint8)
    start = time.perf_counter()
    for k, row in enumerate(tqdm(manifest, desc=f"preprocess ({params.filter})", unit="img")):
        image, mask = busi.load_raw(raw_dir, row["id"])
        images[k] = preprocess(image, params)
        masks[k] = resize_mask(mask, size)
    seconds = time.perf_counter() - start
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        np.save(tmp / "images.npy", images)
        np.save(tmp / "masks.npy", masks)
        with open(tmp / "index.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(INDEX_COLUMNS)
            for k, row in enumerate(manifest):
                writer.writerow([k, row["id"], row["class"], row["width"], row["height"]])
    return {"filter": params.filter, "images": len(manifest), "seconds": round(seconds, 2),
            "ms_per_image": round(1000 * seconds / len(manifest), 2)}


def quality_sample(raw_dir: Path, count: int,
                   train_ids: set[str] | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``count`` lesion images spread evenly over the sorted ids: the fixed set every filter is compared on.

    ``train_ids`` restricts the choice to the train split: a filter is chosen on these figures, and that choice
    must not see the test masks.
    """
    rows = [r for r in busi.read_manifest(raw_dir / "manifest.csv")
            if r["class"] != "normal" and (train_ids is None or r["id"] in train_ids)]
    rows.sort(key=lambda r: r["id"])
    picks = np.linspace(0, len(rows) - 1, num=min(count, len(rows))).round().astype(int)
    return [(rows[k]["id"], *busi.load_raw(raw_dir, rows[k]["id"])) for k in dict.fromkeys(picks.tolist())]


def compare_filters(sample, params: PreprocessParams) -> dict[str, dict[str, float]]:
    """Speckle suppression (ENL ratio), edge preservation and time of every filter on the sample images."""
    table = {}
    for name in filters.FILTERS:
        kwargs = params.filters.kwargs(name)
        scores, elapsed = [], 0.0
        for _, image, mask in sample:
            start = time.perf_counter()
            filtered = filters.apply_filter(image, name, **kwargs)
            elapsed += time.perf_counter() - start  # the filter alone, not the quality measurement
            scores.append(quality.filter_quality(image, filtered, mask))
        table[name] = {
            "enl_ratio": round(float(np.nanmean([s["enl_ratio"] for s in scores])), 4),
            "edge_preservation": round(float(np.nanmean([s["edge_preservation"] for s in scores])), 4),
            "ms_per_image": round(1000 * elapsed / max(len(sample), 1), 2),
        }
    return table


def filter_figure(image: np.ndarray, params: PreprocessParams, path: Path, title: str) -> None:
    """One image through every filter (before CLAHE), side by side, with a zoomed inset row of the centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(filters.FILTERS)
    h, w = image.shape
    crop = (slice(h // 3, h // 3 + h // 3), slice(w // 3, w // 3 + w // 3))
    fig, axes = plt.subplots(2, len(names), figsize=(2.0 * len(names), 4.4))
    for col, name in enumerate(names):
        out = filters.apply_filter(image, name, **params.filters.kwargs(name))
        axes[0, col].imshow(out, cmap="gray", vmin=0, vmax=255)
        axes[0, col].set_title(name, fontsize=9)
        axes[1, col].imshow(out[crop], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[1, 0].set_ylabel("centre, zoomed", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
