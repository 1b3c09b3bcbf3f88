"""ultraseg.data.labelled on folders built from BUSI mirror images in each layout and several file formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ultraseg.data import busi, labelled
from ultraseg.errors import DataError

PICKS = ("benign (1)", "benign (10)", "malignant (1)", "normal (1)")


def mirror_case(mirror: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    cls = image_id.split(" ")[0]
    record = next(r for r in busi.scan_folder(mirror / cls, cls) if r.id == image_id)
    return busi.load_record(record)


def write(path: Path, array: np.ndarray, params: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array, params or [])
    return path


@pytest.fixture
def cases(busi_mirror):
    return {i: mirror_case(busi_mirror, i) for i in PICKS}


def test_folders_layout_with_jpeg_16bit_and_resized_masks(cases, tmp_path):
    root = tmp_path / "site"
    (image, mask), (image2, mask2) = cases["benign (1)"], cases["malignant (1)"]
    write(root / "images" / "a.jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    write(root / "masks" / "a.png", mask.astype(np.uint8))  # 0/1
    write(root / "images" / "b.png", image2.astype(np.uint16) * 257)  # 16-bit
    half = cv2.resize(mask2.astype(np.uint8) * 255, (mask2.shape[1] // 2, mask2.shape[0] // 2),
                      interpolation=cv2.INTER_NEAREST)
    write(root / "masks" / "b.png", half)  # another size, 0/255
    write(root / "images" / "n.bmp", cases["normal (1)"][0])
    write(root / "masks" / "n_mask.png", np.zeros_like(cases["normal (1)"][1], np.uint8))
    assert labelled.detect(root) == "folders"
    found = {c.id: c for c in labelled.scan(root)}
    assert sorted(found) == ["a", "b", "n"]
    image_a, ref_a = labelled.load(found["a"])
    np.testing.assert_array_equal(ref_a, mask)
    image_b, ref_b = labelled.load(found["b"])
    assert image_b.dtype == np.uint16 and ref_b.shape == mask2.shape
    assert np.mean(ref_b == mask2) > 0.98  # nearest upsampling of a halved mask
    _, ref_n = labelled.load(found["n"])
    assert labelled.class_of(found["n"], ref_n) == "normal" and labelled.class_of(found["a"], ref_a) == "lesion"


def test_csv_layout_joins_masks_and_reads_spacing_class_and_group(cases, tmp_path):
    root = tmp_path / "csvsite"
    image, mask = cases["benign (10)"]
    write(root / "scans" / "x.png", image)
    left, right = mask.copy(), mask.copy()
    left[:, mask.shape[1] // 2:] = False
    right[:, : mask.shape[1] // 2] = False
    write(root / "labels" / "x_1.png", left.astype(np.uint8) * 255)
    write(root / "labels" / "x_2.png", right.astype(np.uint8) * 255)
    write(root / "scans" / "n.png", cases["normal (1)"][0])
    (root / "index.csv").write_text("image,mask,class,group,pixel_spacing_mm\n"
                                    "scans/x.png,labels/x_1.png,benign,p1,0.1\n"
                                    "scans/x.png,labels/x_2.png,benign,p1,0.1\n"
                                    "scans/n.png,,normal,p2,\n")
    assert labelled.detect(root) == "csv" and labelled.detect(root / "index.csv") == "csv"
    found = labelled.scan(root)
    assert [(c.id, c.cls, c.group, c.spacing_mm, len(c.masks)) for c in found] == [
        ("scans/x", "benign", "p1", 0.1, 2), ("scans/n", "normal", "p2", None, 0)]
    np.testing.assert_array_equal(labelled.load(found[0])[1], mask)
    assert not labelled.load(found[1])[1].any()


def test_busi_layout_in_class_folders_and_flat(busi_mirror, tmp_path):
    for cls in ("benign", "normal"):
        for path in sorted((busi_mirror / cls).glob(f"{cls} (1)*")):
            (tmp_path / "classes" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp_path / "classes" / cls / path.name)
            (tmp_path / "flat").mkdir(exist_ok=True)
            shutil.copy(path, tmp_path / "flat" / path.name)
    by_class = labelled.scan(tmp_path / "classes")
    assert labelled.detect(tmp_path / "classes") == "busi"
    assert sorted((c.id, c.cls) for c in by_class) == [("benign (1)", "benign"), ("normal (1)", "normal")]
    flat = labelled.scan(tmp_path / "flat", "busi")
    assert sorted(c.id for c in flat) == ["benign (1)", "normal (1)"] and all(c.cls is None for c in flat)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: write(r / "images" / "lonely.png", np.zeros((8, 8), np.uint8)), r"lonely\.png: image without mask"),
        (lambda r: write(r / "masks" / "odd.png", np.full((8, 16), 255, np.uint8)) and
         write(r / "images" / "odd.png", np.zeros((8, 8), np.uint8)), r"odd\.png: mask size 16x8 cannot be matched"),
        (lambda r: write(r / "masks" / "grey.png", np.arange(64, dtype=np.uint8).reshape(8, 8)) and
         write(r / "images" / "grey.png", np.zeros((8, 8), np.uint8)), r"grey\.png: non-binary mask"),
    ],
    ids=["image without mask", "size that cannot be matched", "non-binary mask"],
)
def test_bad_data_is_one_line_naming_the_file(tmp_path, build, message):
    root = tmp_path / "bad"
    write(root / "images" / "ok.png", np.zeros((8, 8), np.uint8))
    write(root / "masks" / "ok.png", np.zeros((8, 8), np.uint8))
    build(root)
    with pytest.raises(DataError, match=message) as err:
        for case in labelled.scan(root):
            labelled.load(case)
    assert "\n" not in str(err.value)


def test_csv_errors_name_the_file_and_line(tmp_path):
    (tmp_path / "a.csv").write_text("image,label\nx.png,y.png\n")
    with pytest.raises(DataError, match=r"a\.csv: missing column\(s\) mask"):
        labelled.scan(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("image,mask\nnothere.png,\n")
    with pytest.raises(DataError, match=r"b\.csv:2: .*nothere\.png not found"):
        labelled.scan(tmp_path / "b.csv")
    write(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "c.csv").write_text("image,mask,pixel_spacing_mm\nx.png,,-1\n")
    with pytest.raises(DataError, match=r"c\.csv:2: pixel_spacing_mm must be a positive number"):
        labelled.scan(tmp_path / "c.csv")
    with pytest.raises(DataError, match="no such folder"):
        labelled.scan(tmp_path / "missing")
