"""The fetch stage's work with extra labelled sources: one raw set, each image named by its source."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import build_csv_source, shipped
from ultraseg.data import busi
from ultraseg.errors import DataError
from ultraseg.pipeline import fetch, split


@pytest.fixture
def two_sources(tmp_path, make_busi, busi_mirror):
    fake = make_busi(tmp_path / "busi")
    expected = build_csv_source(busi_mirror, tmp_path / "siteB", {"benign": range(1, 4), "normal": range(1, 3)})
    return fake, expected, tmp_path


def test_an_extra_csv_source_joins_the_manifest_under_its_name(two_sources):
    fake, expected, tmp_path = two_sources
    params = shipped("fetch", source=str(fake.root), extra_sources=(str(tmp_path / "siteB" / "labels.csv"),))
    rows = fetch.run(params, tmp_path / "raw", tmp_path / "cache")
    manifest = busi.read_manifest(tmp_path / "raw" / "manifest.csv")
    assert [r["id"] for r in manifest] == [r["id"] for r in rows] == fake.ids + [f"siteB/{i}" for i in expected]
    assert {r["source"] for r in manifest[: len(fake.ids)]} == {"busi"}
    extra = manifest[len(fake.ids):]
    assert [r["class"] for r in extra] == list(expected.values())  # no class column: lesion / normal from the mask
    assert [r["group"] for r in extra] == ["patient-benign-1"] * 2 + ["patient-benign-2", "patient-normal-1",
                                                                      "patient-normal-1"]
    assert extra[0]["file"] == "images/scan_benign_1.jpg" and extra[0]["source"] == "siteB"
    image, mask = busi.load_raw(tmp_path / "raw", "siteB/images/scan_benign_1")
    reference = cv2.imread(str(tmp_path / "siteB" / "images" / "scan_benign_1.jpg"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(image, reference)
    assert mask.shape == image.shape and mask.any()  # the half-size mask, resized to its image


def test_given_groups_keep_a_patient_in_one_split(two_sources):
    fake, _, tmp_path = two_sources
    params = shipped("fetch", source=str(fake.root), extra_sources=(f"site_b={tmp_path / 'siteB'}",))
    fetch.run(params, tmp_path / "raw", tmp_path / "cache")
    rows, links, metrics = split.run(tmp_path / "raw", shipped("split"))
    by_patient: dict[str, set[str]] = {}
    manifest = busi.read_manifest(tmp_path / "raw" / "manifest.csv")
    for row, entry in zip(rows, manifest):
        if entry["group"]:
            by_patient.setdefault(entry["group"], set()).add(row["split"])
    assert len(by_patient) == 3 and all(len(splits) == 1 for splits in by_patient.values())
    assert sum(link["kind"] == "group" for link in links) == metrics["group_pairs"] == 2
    assert set(metrics["by_source"]["train"]) == {"busi", "site_b", "total"}
    assert "lesion" in metrics["counts"]["train"]


def test_two_sources_of_one_name_are_refused(two_sources):
    fake, _, tmp_path = two_sources
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "siteB").symlink_to(tmp_path / "siteB")
    params = shipped("fetch", source=str(fake.root),
                     extra_sources=(str(tmp_path / "siteB"), str(tmp_path / "other/siteB")))
    with pytest.raises(DataError, match="two sources named 'siteB'.*name=path"):
        fetch.run(params, tmp_path / "raw", tmp_path / "cache")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("spec, message", [("bad name=x", "a source name is letters"),
                                           ("siteC=/no/such/folder", "/no/such/folder: no such folder")])
def test_a_bad_extra_source_is_one_clear_error(two_sources, spec, message):
    fake, _, tmp_path = two_sources
    params = shipped("fetch", source=str(fake.root), extra_sources=(spec,))
    with pytest.raises(DataError, match=message):
        fetch.run(params, tmp_path / "raw", tmp_path / "cache")
    assert not (tmp_path / "raw").exists()


def test_an_image_without_its_mask_names_the_file_and_writes_nothing(two_sources):
    fake, _, tmp_path = two_sources
    (tmp_path / "siteB" / "masks" / "scan_normal_2.png").unlink()
    params = shipped("fetch", source=str(fake.root), extra_sources=(str(tmp_path / "siteB"),))
    with pytest.raises(DataError, match="scan_normal_2.png not found"):
        fetch.run(params, tmp_path / "raw", tmp_path / "cache")
    assert not (tmp_path / "raw").exists()


def test_a_fold_run_on_a_source_too_small_for_its_folds_is_refused_naming_the_fold(two_sources):
    """The default run splits the small set (the test above); asking for one of its folds is refused."""
    fake, _, tmp_path = two_sources
    fetch.run(shipped("fetch", source=str(fake.root)), tmp_path / "raw", tmp_path / "cache")
    with pytest.raises(ValueError, match=r"^split\.folds: fold \d of 5 holds no (normal|lesion) image"):
        split.run(tmp_path / "raw", shipped("split", fold=0))
