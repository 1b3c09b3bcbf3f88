"""io.py: an interrupted write never leaves a half output (nor temporary litter) that DVC would trust."""

from __future__ import annotations

import math

import pytest

from ultraseg import io


class Boom(RuntimeError):
    pass


def test_atomic_file_failure_keeps_old_and_leaves_no_litter(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom), io.atomic_path(target) as tmp:
        assert tmp.parent != tmp_path  # writes go elsewhere until the end
        tmp.write_text("new, half written")
        raise Boom
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_directory_failure_keeps_old_and_leaves_no_litter(tmp_path):
    target = tmp_path / "raw"
    target.mkdir()
    (target / "a.txt").write_text("a")
    with pytest.raises(Boom), io.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b.txt").write_text("b")
        raise Boom
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert (target / "a.txt").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_atomic_failure_without_old_output_creates_nothing(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(Boom), io.atomic_path(target) as tmp:
        tmp.write_text("x")
        raise Boom
    assert not target.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_directory_success_replaces_whole_directory(tmp_path):
    target = tmp_path / "raw"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    (target / "nested").mkdir()
    (target / "nested" / "deep.txt").write_text("deep")
    with io.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "fresh.txt").write_text("fresh")
    assert sorted(p.name for p in target.iterdir()) == ["fresh.txt"]
    assert (target / "fresh.txt").read_text() == "fresh"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_atomic_file_success_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    with io.atomic_path(target) as tmp:
        tmp.write_text("one")
    assert target.read_text() == "one"
    with io.atomic_path(target) as tmp:
        tmp.write_text("two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_body_that_writes_nothing_fails_and_keeps_old(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(FileNotFoundError, match="nothing was written"), io.atomic_path(target):
        pass
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_write_json_round_trip(tmp_path):
    data = {"filter": "lee", "images": 24, "ratio": 1.25, "nested": {"list": [1, 2.5, None]}, "nan": math.nan}
    path = tmp_path / "metrics" / "m.json"
    io.write_json(path, data)
    back = io.read_json(path)
    assert math.isnan(back.pop("nan"))
    assert back == {k: v for k, v in data.items() if k != "nan"}
    assert list(back) == ["filter", "images", "ratio", "nested"]  # key order kept, not sorted
    assert path.read_text().endswith("}\n")


def test_write_csv_round_trip(tmp_path):
    rows = [{"id": "benign (1)", "class": "benign", "width": 52}, {"id": "normal (2)", "class": "normal", "width": 7}]
    path = tmp_path / "m.csv"
    io.write_csv(path, rows, ("id", "class", "width"))
    assert path.read_text().splitlines()[0] == "id,class,width"
    assert io.read_csv(path) == [
        {"id": "benign (1)", "class": "benign", "width": "52"},
        {"id": "normal (2)", "class": "normal", "width": "7"},
    ]


def test_write_csv_column_order_and_stray_key(tmp_path):
    path = tmp_path / "m.csv"
    io.write_csv(path, [{"b": 1, "a": 2}], ["a", "b"])
    assert path.read_text().splitlines() == ["a,b", "2,1"]
    with pytest.raises(ValueError, match="stray"):
        io.write_csv(path, [{"a": 1, "b": 2, "stray": 3}], ["a", "b"])
    assert path.read_text().splitlines() == ["a,b", "2,1"]  # the failed write left the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]
