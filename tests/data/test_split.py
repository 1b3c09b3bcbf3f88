"""split.py: whole duplicate groups go to one split, classes keep their fractions, and copies of a scan are found."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from ultraseg.data import busi
from ultraseg.data.split import (SPLITS, Link, check_folds, find_duplicates, given_links, group_folds, group_ids,
                                 stratified_group_split)
from ultraseg.params import SplitFractions
from tests.conftest import shipped

FRACTIONS = SplitFractions(0.7, 0.1, 0.2)


def random_structure(rng: np.random.Generator, n_groups: int, max_size: int = 4, cross_class: float = 0.1):
    """Classes and group numbers of images in ``n_groups`` groups of 1..max_size; some groups mix classes."""
    classes, groups = [], []
    for g in range(n_groups):
        size = int(rng.integers(1, max_size + 1))
        cls = str(rng.choice(["benign", "benign", "malignant", "normal"]))
        for _ in range(size):
            mixed = rng.random() < cross_class
            classes.append(str(rng.choice(["benign", "malignant", "normal"])) if mixed else cls)
            groups.append(g)
    order = rng.permutation(len(classes))  # members of a group need not be adjacent
    return [classes[i] for i in order], np.array(groups)[order]


# ---------------------------------------------------------------------------------------------------- the split


@pytest.mark.parametrize("structure_seed", range(6))
def test_no_group_crosses_splits(structure_seed):
    rng = np.random.default_rng(structure_seed)
    classes, groups = random_structure(rng, n_groups=int(rng.integers(20, 120)))
    assignment = stratified_group_split(classes, groups, FRACTIONS, seed=structure_seed)
    assert len(assignment) == len(classes)
    assert set(assignment) <= set(SPLITS)
    for g in np.unique(groups):
        assert len({assignment[i] for i in np.flatnonzero(groups == g)}) == 1, f"group {g} crosses splits"


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_class_fractions_close_to_target(seed):
    """With groups of 1-3 images, every class gets its share within a few images."""
    rng = np.random.default_rng(100 + seed)
    classes, groups = random_structure(rng, n_groups=180, max_size=3, cross_class=0.0)
    assignment = stratified_group_split(classes, groups, FRACTIONS, seed=seed)
    counts = Counter(zip(classes, assignment))
    for cls in ("benign", "malignant", "normal"):
        total = sum(counts[cls, s] for s in SPLITS)
        assert total >= 60
        for split, target in zip(SPLITS, (0.7, 0.1, 0.2)):
            share = counts[cls, split] / total
            assert abs(share - target) <= 3 / total + 1e-9, (cls, split, share)


def test_singletons_split_exactly():
    classes = ["benign"] * 100 + ["malignant"] * 50 + ["normal"] * 30
    groups = np.arange(len(classes))
    assignment = stratified_group_split(classes, groups, FRACTIONS, seed=0)
    counts = Counter(zip(classes, assignment))
    assert [counts["benign", s] for s in SPLITS] == [70, 10, 20]
    assert [counts["malignant", s] for s in SPLITS] == [35, 5, 10]
    assert [counts["normal", s] for s in SPLITS] == [21, 3, 6]


def test_zero_val_fraction_leaves_val_empty():
    classes = ["benign"] * 40 + ["malignant"] * 20
    assignment = stratified_group_split(classes, np.arange(60), SplitFractions(0.75, 0.0, 0.25), seed=3)
    assert Counter(assignment) == {"train": 45, "test": 15}


def test_same_seed_same_split_different_seed_different():
    rng = np.random.default_rng(7)
    classes, groups = random_structure(rng, n_groups=150)
    first = stratified_group_split(classes, groups, FRACTIONS, seed=5)
    assert stratified_group_split(classes, groups, FRACTIONS, seed=5) == first
    others = [stratified_group_split(classes, groups, FRACTIONS, seed=s) for s in (6, 7, 8)]
    for other in others:
        assert other != first
        assert Counter(other) == pytest.approx(Counter(first), abs=6)  # a reshuffle, not another fraction


def test_cross_class_group_goes_to_its_most_severe_stratum():
    """A normal+malignant scan competes with the malignant groups, not the normal ones.

    With fractions 0.2/0.1/0.7 the lone malignant-stratum group goes to test. Had it been put among the normal
    groups of 4, 4 and 3 images (targets 2.6, 1.3, 9.1 of 13) it would have gone to val: the fours go to test,
    the three to train, and then val is furthest below its target.
    """
    classes = ["normal", "malignant"] + ["normal"] * 11
    groups = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    for seed in range(5):
        assignment = stratified_group_split(classes, groups, SplitFractions(0.2, 0.1, 0.7), seed=seed)
        assert assignment[:2] == ["test", "test"]
        relabelled = stratified_group_split(["normal"] * 13, groups, SplitFractions(0.2, 0.1, 0.7), seed=seed)
        assert relabelled[:2] == ["val", "val"]


def test_given_groups_link_within_their_source_only():
    links = given_links(["p1", "", "p1", "p2", "p2", "p1"], ["a", "a", "a", "a", "b", "a"])
    assert [(k.a, k.b, k.kind) for k in links] == [(0, 2, "group"), (0, 5, "group")]


@pytest.mark.parametrize("seed", range(3))
def test_each_source_gets_its_own_fractions(seed):
    rng = np.random.default_rng(seed)
    classes, groups = random_structure(rng, n_groups=120)
    sources = ["big"] * 100 + ["small"] * (len(classes) - 100)
    assignment = stratified_group_split(classes, groups, FRACTIONS, seed, sources)
    for name in ("big", "small"):
        mine = [a for a, s in zip(assignment, sources) if s == name]
        counts = Counter(mine)
        for split, share in zip(SPLITS, (0.7, 0.1, 0.2)):
            assert abs(counts[split] - share * len(mine)) <= 8  # whole groups of up to 4 images, 3 strata


def test_one_source_splits_as_without_sources():
    rng = np.random.default_rng(3)
    classes, groups = random_structure(rng, n_groups=60)
    assert stratified_group_split(classes, groups, FRACTIONS, 1, ["busi"] * len(classes)) == \
        stratified_group_split(classes, groups, FRACTIONS, 1)


@pytest.mark.parametrize("seed", range(4))
def test_cross_class_groups_equal_relabelling_to_most_severe(seed):
    rng = np.random.default_rng(seed)
    classes, groups = random_structure(rng, n_groups=80, cross_class=0.3)
    severity = {"normal": 0, "benign": 1, "malignant": 2}
    worst = {g: max((c for c, h in zip(classes, groups) if h == g), key=severity.__getitem__) for g in set(groups)}
    assert any(len({c for c, h in zip(classes, groups) if h == g}) > 1 for g in worst)  # there are mixed groups
    relabelled = [worst[g] for g in groups]
    assert stratified_group_split(classes, groups, FRACTIONS, seed) == stratified_group_split(
        relabelled, groups, FRACTIONS, seed)


def test_group_ids_numbered_by_first_image():
    links = [Link(2, 4, "near"), Link(0, 3, "exact"), Link(4, 5, "near")]
    assert group_ids(7, links).tolist() == [0, 1, 2, 0, 2, 2, 3]
    assert group_ids(3, []).tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------- duplicates

# Singletons of the real mirror: different patients (verified against the full-mirror duplicate search).
UNRELATED = ["benign (20)", "benign (22)", "benign (23)", "benign (24)", "malignant (1)", "malignant (2)",
             "malignant (3)", "normal (2)", "normal (3)", "normal (4)"]


def mirror_image(mirror, image_id: str) -> np.ndarray:
    cls = image_id.split(" ")[0]
    return busi.read_image(mirror / cls / f"{image_id}.webp")


@pytest.fixture(scope="module")
def real_images(busi_mirror):
    return [mirror_image(busi_mirror, i) for i in UNRELATED]


def zoomed_crop(image: np.ndarray) -> np.ndarray:
    """The same scan saved again: 15% cropped off the left side and enlarged 1.2x, as BUSI's duplicates are."""
    h, w = image.shape
    crop = image[:, int(round(0.15 * w)):]
    return cv2.resize(crop, (round(crop.shape[1] * 1.2), round(h * 1.2)), interpolation=cv2.INTER_LINEAR)


def test_distinct_real_images_are_not_linked(real_images):
    assert find_duplicates(real_images, shipped("split.duplicates")) == []


def test_copies_of_real_images_are_linked(real_images):
    images = list(real_images)
    near_of, exact_of = 1, 5  # benign (22), malignant (2)
    images.append(zoomed_crop(images[near_of]))  # index 10
    images.append(images[exact_of].copy())  # index 11
    links = find_duplicates(images, shipped("split.duplicates"))
    by_pair = {(link.a, link.b): link for link in links}
    assert set(by_pair) == {(near_of, 10), (exact_of, 11)}
    assert by_pair[exact_of, 11].kind == "exact"
    near = by_pair[near_of, 10]
    assert near.kind == "near"
    assert near.inliers >= shipped("split.duplicates").min_matches
    assert near.scale == pytest.approx(1 / 1.2, abs=0.02)  # image b mapped onto image a shrinks by 1.2
    assert near.ncc >= 0.35
    groups = group_ids(len(images), links)
    assert groups[10] == groups[near_of] and groups[11] == groups[exact_of]
    assert len(set(groups.tolist())) == len(real_images)  # no other image joined a group


def test_known_identical_pair_in_the_mirror_is_linked(busi_mirror):
    """benign (433) and malignant (145) are byte-identical in the original archive (mirror README)."""
    a = mirror_image(busi_mirror, "benign (433)")
    b = mirror_image(busi_mirror, "malignant (145)")
    c = mirror_image(busi_mirror, "benign (20)")
    links = find_duplicates([a, c, b], shipped("split.duplicates"))
    assert [(link.a, link.b) for link in links] == [(0, 2)]
    assert links[0].kind in ("exact", "near")
    groups = group_ids(3, links)
    assert groups.tolist() == [0, 1, 0]
    for seed in range(3):
        assignment = stratified_group_split(["benign", "benign", "malignant"], groups, FRACTIONS, seed)
        assert assignment[0] == assignment[2]


@pytest.mark.parametrize("seed", [0, 1])
def test_folds_never_split_a_group_and_each_holds_both_classes(seed):
    rng = np.random.default_rng(seed)
    classes = list(rng.choice(["normal", "benign", "malignant"], size=200, p=[0.2, 0.5, 0.3]))
    groups = np.minimum(np.arange(200), rng.integers(0, 200, 200))  # many images share a group
    groups = np.unique(groups, return_inverse=True)[1]
    splits = stratified_group_split(classes, groups, SplitFractions(0.7, 0.1, 0.2), seed)
    folds = group_folds(classes, groups, splits, 5, seed)
    assert all((f is None) == (s == "test") for f, s in zip(folds, splits))
    for g in np.unique(groups):
        assert len({folds[i] for i in np.flatnonzero(groups == g)}) == 1  # a group lies in one fold
    sizes = [sum(f == k for f in folds) for k in range(5)]
    assert max(sizes) - min(sizes) <= max(np.bincount(groups)) + 2
    for k in range(5):
        assert {classes[i] == "normal" for i in range(200) if folds[i] == k} == {True, False}


def test_a_fold_without_normal_images_is_refused_naming_it():
    classes = ["benign"] * 18 + ["normal"] * 2
    groups = np.arange(20)
    splits = ["train"] * 20
    folds = group_folds(classes, groups, splits, 5, 0)  # dealing alone does not refuse: only a run using folds
    with pytest.raises(ValueError, match=r"^split\.folds: fold \d of 5 holds no normal image"):
        check_folds(classes, folds, 5)
    check_folds(classes, folds, 1)
