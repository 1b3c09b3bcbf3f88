"""The split stage's work: read every fetched image, link near-duplicates, split whole groups by class
(:mod:`ultraseg.data.split`), and count what went where. With ``split.fold`` set, train and val are one fold of
the grouped cross-validation over them instead (test is the same in every fold)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ultraseg.data import busi
from ultraseg.data.split import (SPLITS, Link, check_folds, find_duplicates, given_links, group_folds, group_ids,
                                 severity, stratified_group_split)
from ultraseg.params import SplitParams

SPLIT_COLUMNS = ("id", "class", "split", "group", "group_size", "conflict")
LINK_COLUMNS = ("a", "b", "kind", "inliers", "scale", "ncc")


def run(raw_dir: Path, params: SplitParams) -> tuple[list[dict], list[dict], dict]:
    """Split the fetch stage's images; return the split rows, the duplicate links and the stage's metrics."""
    start = time.perf_counter()
    manifest = busi.read_manifest(raw_dir / "manifest.csv")
    ids = [row["id"] for row in manifest]
    classes = [row["class"] for row in manifest]
    sources = [row.get("source", "") for row in manifest]
    images = [busi.load_raw(raw_dir, i)[0] for i in tqdm(ids, desc="split: read", unit="img")]
    links = find_duplicates(images, params.duplicates)
    links += given_links([row.get("group", "") for row in manifest], sources)
    groups = group_ids(len(ids), links)
    splits = stratified_group_split(classes, groups, params.fractions, params.seed, sources)
    folds = group_folds(classes, groups, splits, params.folds, params.seed, sources)
    if params.fold is not None:  # cross-validation: this fold is val, the others train; test stays as it is
        check_folds(classes, folds, params.folds)
        splits = [s if f is None else ("val" if f == params.fold else "train") for s, f in zip(splits, folds)]
    sizes = np.bincount(groups)
    group_classes: dict[int, set[str]] = {}
    for g, cls in zip(groups.tolist(), classes):
        group_classes.setdefault(g, set()).add(cls)
    rows = [
        {"id": i, "class": c, "split": s, "group": g, "group_size": int(sizes[g]),
         "conflict": int(len(group_classes[g]) > 1)}
        for i, c, s, g in zip(ids, classes, splits, groups.tolist())
    ]
    link_rows = [{"a": ids[k.a], "b": ids[k.b], "kind": k.kind, "inliers": k.inliers, "scale": k.scale,
                  "ncc": k.ncc} for k in links]
    metrics = _metrics(rows, links, sizes, time.perf_counter() - start)
    metrics["folds"] = {"folds": params.folds, "fold": params.fold,
                        "images": [sum(f == k for f in folds) for k in range(params.folds)]}
    if len(set(sources)) > 1:
        metrics["by_source"] = _counts(sources, splits, list(dict.fromkeys(sources)))
    return rows, link_rows, metrics


def _counts(labels: list[str], splits: list[str], order: list[str]) -> dict[str, dict[str, int]]:
    """Images per label (``order``'s) in each split, with each split's total."""
    counts = {s: {label: 0 for label in order} for s in SPLITS}
    for label, split in zip(labels, splits):
        counts[split][label] += 1
    for split in SPLITS:
        counts[split]["total"] = sum(counts[split].values())
    return counts


def _metrics(rows: list[dict], links: list[Link], sizes: np.ndarray, seconds: float) -> dict:
    classes = [row["class"] for row in rows]
    counts = _counts(classes, [row["split"] for row in rows], sorted(set(classes), key=severity))
    conflicted = {row["group"] for row in rows if row["conflict"]}
    return {
        "images": len(rows),
        "duplicate_groups": int((sizes > 1).sum()),
        "images_in_duplicate_groups": int(sizes[sizes > 1].sum()),
        "largest_group": int(sizes.max()),
        "cross_class_groups": len(conflicted),
        "exact_pairs": sum(link.kind == "exact" for link in links),
        "near_pairs": sum(link.kind == "near" for link in links),
        "group_pairs": sum(link.kind == "group" for link in links),
        "counts": counts,
        "seconds": round(seconds, 1),
    }
