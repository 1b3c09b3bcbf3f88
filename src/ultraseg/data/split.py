"""Leakage-free train/val/test split: group near-duplicate scans, then split whole groups, stratified by class.

BUSI holds the same scan saved more than once (another crop, a 1.2x or 2x zoom, other burned-in marks), and
adjacent frames of one lesion (Pawłowska et al., Data in Brief 48 (2023) 109247). Two images are linked when

1. their decoded pixels are identical, or
2. they are geometrically the same view: SIFT keypoints (Lowe 2004; RootSIFT, Arandjelović & Zisserman 2012)
   agree under one similarity transform (RANSAC) with at least ``min_matches`` inliers, and after warping one onto
   the other the band-pass filtered tissue they share correlates with NCC >= ``min_ncc`` over at least
   ``min_overlap`` of the smaller image. Band-pass NCC compares the speckle pattern itself, which two different
   patients never share even when the scanner's burned-in text and calipers match exactly.

Candidate pairs come from an approximate nearest-neighbour vote over every descriptor (FLANN), so the check is
far from quadratic. Groups are the connected components of the links.

Images that a source gives the same patient or study id (its ``group`` column) are linked as well, so no patient
spans two splits.

Cross-class groups (the same scan filed as benign and malignant, or benign and normal) keep all their images, each
with its own class and mask, and are stratified by their most severe class (malignant > benign > normal; a class of
a source's own, such as ``lesion``, ranks with benign); the ``conflict`` column marks them so evaluation can report
them apart. With several sources, each source is stratified on its own, so every split gets its share of each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from ultraseg.params import DuplicateParams, SplitFractions

SEVERITY = {"normal": 0, "benign": 1, "malignant": 2}
"""BUSI's classes by severity; any other class is a lesion class and ranks with benign (:func:`severity`)."""
SPLITS = ("train", "val", "test")
_NEIGHBOURS = 6
_MIN_SIMILARITY = 0.93  # RootSIFT cosine similarity of a matching descriptor pair
_MIN_VOTES = 5
_TISSUE = 8  # grey level under which a pixel is background, not tissue


@dataclass(frozen=True)
class Link:
    a: int
    b: int
    kind: str  # "exact", "near" or "group" (the same patient or study, as its source says)
    inliers: int = 0
    scale: float = 1.0
    ncc: float = 1.0


# ---------------------------------------------------------------------------------------------------- features


def _features(image: np.ndarray, sift: cv2.SIFT) -> tuple[np.ndarray, np.ndarray]:
    keypoints, desc = sift.detectAndCompute(image, None)
    if desc is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    desc = np.sqrt(desc / (desc.sum(axis=1, keepdims=True) + 1e-7))  # RootSIFT: Hellinger kernel as a dot product
    return np.float32([k.pt for k in keypoints]), desc.astype(np.float32)


def _candidates(descs: list[np.ndarray]) -> list[tuple[int, int]]:
    """Pairs of images that share at least ``_MIN_VOTES`` near-identical descriptors."""
    owner = np.concatenate([np.full(len(d), i) for i, d in enumerate(descs)])
    if len(owner) <= _NEIGHBOURS:
        return []
    stacked = np.concatenate(descs)
    index = cv2.flann_Index(stacked, dict(algorithm=1, trees=4))  # randomised kd-trees
    nearest, dist = index.knnSearch(stacked, _NEIGHBOURS, params=dict(checks=64))
    query = np.repeat(owner[:, None], _NEIGHBOURS, axis=1)
    other = owner[nearest]
    keep = (1.0 - dist / 2.0 > _MIN_SIMILARITY) & (other != query)  # unit vectors: |a-b|^2 = 2 - 2cos
    n = len(descs)
    votes = coo_matrix((np.ones(keep.sum()), (query[keep], other[keep])), shape=(n, n)).toarray()
    votes = votes + votes.T
    a, b = np.nonzero(np.triu(votes >= _MIN_VOTES, k=1))
    return list(zip(a.tolist(), b.tolist()))


def _bandpass(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return cv2.GaussianBlur(image, (0, 0), 1.0) - cv2.GaussianBlur(image, (0, 0), 4.0)


def _verify(ia: np.ndarray, ib: np.ndarray, fa, fb, params: DuplicateParams) -> Link | None:
    """Align image b onto image a; a Link if they show the same tissue, else None."""
    (pa, da), (pb, db) = fa, fb
    if len(da) < 4 or len(db) < 4:
        return None
    matches = cv2.BFMatcher(cv2.NORM_L2, crossCheck=True).match(db, da)
    if len(matches) < params.min_matches:
        return None
    src = pb[[m.queryIdx for m in matches]]
    dst = pa[[m.trainIdx for m in matches]]
    transform, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if transform is None or int(inliers.sum()) < params.min_matches:
        return None
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    h, w = ia.shape
    warped = cv2.warpAffine(ib, transform, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    inside = cv2.warpAffine(np.ones_like(ib), transform, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    shared = (inside > 0) & (ia > _TISSUE) & (warped > _TISSUE)
    shared = cv2.erode(shared.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0  # drop interpolated borders
    overlap = shared.sum() / min(ia.size, ib.size * scale * scale)
    if overlap < params.min_overlap or shared.sum() < 100:
        return None
    ncc = float(np.corrcoef(_bandpass(ia)[shared], _bandpass(warped)[shared])[0, 1])
    if not ncc >= params.min_ncc:
        return None
    return Link(-1, -1, "near", int(inliers.sum()), scale, ncc)


def find_duplicates(images: list[np.ndarray], params: DuplicateParams) -> list[Link]:
    """Every exact or near-duplicate link between the given greyscale images."""
    links = []
    first_seen: dict[str, int] = {}
    for i, image in enumerate(images):
        key = hashlib.sha256(image.tobytes() + repr(image.shape).encode()).hexdigest()
        if key in first_seen:
            links.append(Link(first_seen[key], i, "exact"))
        first_seen.setdefault(key, i)
    sift = cv2.SIFT_create(nfeatures=params.max_features)
    feats = [_features(im, sift) for im in tqdm(images, desc="split: features", unit="img")]
    exact = {(link.a, link.b) for link in links}
    for a, b in tqdm(_candidates([d for _, d in feats]), desc="split: verify", unit="pair"):
        if (a, b) in exact:
            continue
        if (link := _verify(images[a], images[b], feats[a], feats[b], params)) is not None:
            links.append(Link(a, b, link.kind, link.inliers, round(link.scale, 3), round(link.ncc, 3)))
    return links


def group_ids(n: int, links: list[Link]) -> np.ndarray:
    """Connected components of the links: one group number per image, numbered by first image."""
    rows = [link.a for link in links]
    cols = [link.b for link in links]
    graph = coo_matrix((np.ones(len(links)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = {label: k for k, label in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[label] for label in labels])


# ---------------------------------------------------------------------------------------------------- split


def severity(cls: str) -> tuple[int, str]:
    """Sort key of a class: BUSI's order, other (lesion) classes with benign, then by name."""
    return SEVERITY.get(cls, 1), cls


def given_links(groups: Sequence[str], sources: Sequence[str]) -> list[Link]:
    """Links between the images that one source gives the same non-empty group id, each to the group's first."""
    first: dict[tuple[str, str], int] = {}
    links = []
    for i, key in enumerate(zip(sources, groups)):
        if key[1]:
            if key in first:
                links.append(Link(first[key], i, "group"))
            first.setdefault(key, i)
    return links


def stratified_group_split(
    classes: list[str], groups: np.ndarray, fractions: SplitFractions, seed: int, sources: Sequence[str] | None = None
) -> list[str]:
    """Assign whole groups to splits so that every stratum gets the fractions' share of its images.

    A group's stratum is its source (that of its first image) and its most severe class. Strata are taken source by
    source, most severe class first; within one, groups are shuffled with ``seed`` and, largest first, each goes to
    the split that is furthest below its target; ties go to the earlier split in ``train, val, test`` order.
    """
    shares = np.array([fractions.train, fractions.val, fractions.test])
    return [SPLITS[k] for k in _deal(classes, groups, shares, seed, sources)]


def group_folds(classes: Sequence[str], groups: np.ndarray, splits: Sequence[str], folds: int, seed: int,
                sources: Sequence[str] | None = None) -> list[int | None]:
    """Each image's cross-validation fold in ``0 .. folds - 1``, None for test images: the train and val images'
    whole groups dealt out in equal shares, stratified as :func:`stratified_group_split` deals splits."""
    pool = [i for i, s in enumerate(splits) if s != "test"]
    sources = list(sources) if sources is not None else [""] * len(classes)
    dealt = _deal([classes[i] for i in pool], groups[pool], np.full(folds, 1.0 / folds), seed,
                  [sources[i] for i in pool])
    assignment: list[int | None] = [None] * len(classes)
    for i, fold in zip(pool, dealt):
        assignment[i] = fold
    return assignment


def check_folds(classes: Sequence[str], assignment: Sequence[int | None], folds: int) -> None:
    """Refuse, naming it, a fold that lacks lesion or normal images, which its scores need. Only a run that uses
    the folds asks: a small source whose folds cannot all hold both classes still splits into train/val/test."""
    for fold in range(folds):
        members = {c == "normal" for c, f in zip(classes, assignment) if f == fold}
        if members != {True, False}:
            lacking = "normal" if True not in members else "lesion"
            raise ValueError(f"split.folds: fold {fold} of {folds} holds no {lacking} image to score; "
                             "use fewer folds")


def _deal(classes: Sequence[str], groups: np.ndarray, shares: np.ndarray, seed: int,
          sources: Sequence[str] | None) -> list[int]:
    """Each image's bucket: whole groups, stratum by stratum, each to the bucket furthest below its share."""
    rng = np.random.default_rng(seed)
    sources = list(sources) if sources is not None else [""] * len(classes)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    stratum = {g: (sources[idx[0]], max((classes[i] for i in idx), key=severity)) for g, idx in members.items()}
    source_order = list(dict.fromkeys(sources))

    def order(key: tuple[str, str]) -> tuple[int, int, str]:
        rank, name = severity(key[1])
        return source_order.index(key[0]), -rank, name

    assignment = [0] * len(classes)
    for key in sorted(set(stratum.values()), key=order):
        ids = [g for g in members if stratum[g] == key]
        ids = [ids[k] for k in rng.permutation(len(ids))]
        ids.sort(key=lambda g: -len(members[g]))  # stable: shuffled order kept among equal sizes
        total = sum(len(members[g]) for g in ids)
        counts = np.zeros(len(shares))
        for g in ids:
            bucket = int(np.argmax(shares * total - counts))
            counts[bucket] += len(members[g])
            for i in members[g]:
                assignment[i] = bucket
    return assignment


# ---------------------------------------------------------------------------------------------------- the stage
