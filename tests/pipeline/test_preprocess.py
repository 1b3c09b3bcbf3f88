"""The preprocess stage's work: the stored arrays, the filter-comparison sample and table."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ultraseg.data import busi
from ultraseg.data.dataset import Preprocessed
from ultraseg.errors import DataError
from ultraseg.pipeline import preprocess as stage
from ultraseg.runtime import filters
from ultraseg.runtime import preprocess as pp
from tests.conftest import shipped


# ---------------------------------------------------------------------------------------------------- the stage


def test_run_and_load_round_trip(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src", layout="original")
    raw = tmp_path / "raw"
    manifest = busi.fetch(str(fake.root), raw, tmp_path / "cache")
    params = shipped("preprocess", size=32, filter="median")
    timing = stage.run(raw, tmp_path / "pre", params)
    assert timing["filter"] == "median" and timing["images"] == len(manifest) == 7
    # the per-image figure is the total over the images (both rounded to 0.01)
    assert timing["ms_per_image"] * 7 / 1000 == pytest.approx(timing["seconds"], abs=0.006)

    loaded = Preprocessed.load(tmp_path / "pre")
    assert sorted(p.name for p in (tmp_path / "pre").iterdir()) == ["images.npy", "index.csv", "masks.npy"]
    assert loaded.images.shape == loaded.masks.shape == (7, 32, 32)
    assert loaded.images.dtype == loaded.masks.dtype == np.uint8
    assert set(np.unique(loaded.masks).tolist()) == {0, 1}
    assert [row["id"] for row in loaded.index] == [row["id"] for row in manifest]
    assert loaded.index[0] == {"row": "0", "id": "benign (1)", "class": "benign", "width": "52", "height": "40"}
    for k, image_id in enumerate(fake.ids):
        np.testing.assert_array_equal(loaded.images[k], pp.preprocess(fake.images[image_id], params))
        np.testing.assert_array_equal(loaded.masks[k], pp.resize_mask(fake.masks[image_id], 32))
    assert loaded.masks[fake.ids.index("normal (1)")].sum() == 0

    assert loaded.rows(["normal (2)", "benign (1)"]).tolist() == [6, 0]
    with pytest.raises(DataError, match=re.escape("'benign (9)' is in the split but not in the preprocessed")):
        loaded.rows(["benign (1)", "benign (9)"])


def test_quality_sample_takes_lesion_images_only(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src", counts={"benign": 4, "malignant": 3, "normal": 3})
    busi.fetch(str(fake.root), tmp_path / "raw", tmp_path / "cache")
    sample = stage.quality_sample(tmp_path / "raw", 3)
    assert [s[0] for s in sample] == ["benign (1)", "benign (4)", "malignant (3)"]  # spread over sorted ids
    assert all(s[2].dtype == bool and s[1].shape == s[2].shape for s in sample)
    assert len(stage.quality_sample(tmp_path / "raw", 50)) == 7  # never more than there are
    train_only = stage.quality_sample(tmp_path / "raw", 50, train_ids={"benign (2)", "malignant (1)", "normal (1)"})
    assert [s[0] for s in train_only] == ["benign (2)", "malignant (1)"]


def test_compare_filters_on_real_images(busi_mirror):
    sample = []
    for image_id in ("benign (20)", "benign (24)", "malignant (1)", "malignant (3)"):
        cls = image_id.split(" ")[0]
        record = busi.Record(image_id, cls, busi_mirror / cls / f"{image_id}.webp",
                             tuple(sorted((busi_mirror / cls).glob(f"{image_id}_mask*.png"))))
        sample.append((image_id, *busi.load_record(record)))
    table = stage.compare_filters(sample, shipped("preprocess"))
    assert list(table) == list(filters.FILTERS)
    assert set(filters.FILTERS) == {"none", "gaussian", "median", "bilateral", "nlm", "lee", "frost", "kuan", "srad"}
    assert table["none"]["enl_ratio"] == 1.0 and table["none"]["edge_preservation"] == 1.0
    for name, row in table.items():
        assert set(row) == {"enl_ratio", "edge_preservation", "ms_per_image"}
        assert np.isfinite(row["enl_ratio"]) and np.isfinite(row["edge_preservation"]), name
        assert row["edge_preservation"] <= 1.0 + 1e-9
    for name in ("gaussian", "median", "bilateral", "nlm", "lee", "frost", "kuan", "srad"):
        assert table[name]["enl_ratio"] > 1.0, name
    assert table["lee"]["enl_ratio"] > 2.0  # about 3 on these four images
