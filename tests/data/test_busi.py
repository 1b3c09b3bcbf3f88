"""busi.py: both layouts, zip and URL sources read into the same normalised set; every bad input named precisely."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ultraseg.data import busi
from ultraseg.errors import DataError
from ultraseg.io import read_csv

COLUMNS = ["id", "class", "file", "width", "height", "mask_files", "sha256", "source", "group"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_fetch(source, tmp_path: Path, sha: str | None = None, name: str = "raw") -> tuple[list[dict], Path]:
    out = tmp_path / "work" / name
    rows = busi.fetch(str(source), out, tmp_path / "cache", sha)
    return rows, out


def assert_fetched(rows: list[dict], out: Path, fake) -> None:
    """The manifest, images and masks in ``out`` are exactly what ``fake`` promises."""
    manifest = read_csv(out / "manifest.csv")
    assert (out / "manifest.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert [r["id"] for r in manifest] == [r["id"] for r in rows] == fake.ids
    assert sorted(p.name for p in out.iterdir()) == ["images", "manifest.csv", "masks"]
    for row in manifest:
        image_id = row["id"]
        expected = fake.images[image_id]
        assert row["class"] == fake.classes[image_id]
        assert row["file"] == f"{fake.classes[image_id]}/{fake.image_files[image_id].name}"
        assert (int(row["width"]), int(row["height"])) == (expected.shape[1], expected.shape[0])
        assert int(row["mask_files"]) == len(fake.mask_files[image_id])
        assert row["sha256"] == sha256(fake.image_files[image_id])
        assert row["source"] == manifest[0]["source"] != "" and row["group"] == ""
        with Image.open(out / "images" / f"{image_id}.png") as im:
            assert im.mode == "L"  # written greyscale whatever the source
            np.testing.assert_array_equal(np.asarray(im), expected)
        with Image.open(out / "masks" / f"{image_id}.png") as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), fake.masks[image_id].astype(np.uint8) * 255)
    assert sorted(p.stem for p in (out / "images").iterdir()) == sorted(fake.ids)
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(fake.ids)


def assert_nothing_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    assert not work.exists() or sorted(p.name for p in work.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- good input


def test_mirror_layout(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src", layout="mirror")
    rows, out = run_fetch(fake.root, tmp_path)
    assert len(rows) == 7
    assert rows[0] == {"id": "benign (1)", "class": "benign", "file": "benign/benign (1).webp", "width": 52,
                       "height": 40, "mask_files": 2, "sha256": sha256(fake.image_files["benign (1)"]),
                       "source": "src", "group": ""}
    assert_fetched(rows, out, fake)


def test_original_layout(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src", layout="original")
    rows, out = run_fetch(fake.root, tmp_path)
    assert_fetched(rows, out, fake)
    # the fixture really holds what the original archive does
    modes = {Image.open(p).mode for paths in fake.mask_files.values() for p in paths}
    assert modes == {"RGB", "RGBA", "1"}
    assert Image.open(fake.image_files["benign (1)"]).mode == "RGB"


def test_two_mask_files_are_united(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src", layout="original")
    first, second = (busi.read_mask(p) for p in fake.mask_files["benign (1)"])
    assert first.sum() == 8 * 12 and second.sum() == 10 * 15 and not (first & second).any()
    _, out = run_fetch(fake.root, tmp_path)
    union = np.asarray(Image.open(out / "masks" / "benign (1).png")) > 0
    assert union.sum() == 8 * 12 + 10 * 15
    np.testing.assert_array_equal(union, first | second)


@pytest.mark.parametrize("kind", ["1bit", "grey", "rgb", "rgba"])
def test_read_mask_formats(tmp_path, kind):
    mask = np.zeros((9, 11), bool)
    mask[2:5, 3:9] = True
    grey = mask.astype(np.uint8) * 255
    path = tmp_path / f"{kind}.png"
    if kind == "1bit":
        Image.fromarray(grey).convert("1").save(path)
    elif kind == "grey":
        Image.fromarray(grey, "L").save(path)
    elif kind == "rgb":
        Image.fromarray(np.dstack([grey] * 3), "RGB").save(path)
    else:
        Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), "RGBA").save(path)
    assert Image.open(path).mode == {"1bit": "1", "grey": "L", "rgb": "RGB", "rgba": "RGBA"}[kind]
    out = busi.read_mask(path)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, mask)


def test_read_mask_rgba_uses_colour_not_alpha(tmp_path):
    """Alpha is only opacity: a transparent black pixel is background, an opaque white one lesion."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, :3] = 255
    rgba[3, 3, 3] = 0  # transparent background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    expected = np.zeros((4, 4), bool)
    expected[0, 0] = True
    np.testing.assert_array_equal(busi.read_mask(tmp_path / "m.png"), expected)


def test_read_mask_zero_one_levels(tmp_path):
    Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "L").save(tmp_path / "m.png")
    np.testing.assert_array_equal(busi.read_mask(tmp_path / "m.png"), [[False, True], [True, False]])


def test_read_image_colour_uses_luma(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[1, 0] = (0, 0, 255)
    rgb[1, 1] = (100, 100, 100)
    Image.fromarray(rgb, "RGB").save(tmp_path / "c.png")
    grey = busi.read_image(tmp_path / "c.png")
    assert grey.dtype == np.uint8
    np.testing.assert_array_equal(grey, [[76, 150], [29, 100]])  # ITU-R 601: 0.299 R + 0.587 G + 0.114 B


def test_refetch_replaces_output(tmp_path, make_busi):
    big = make_busi(tmp_path / "big", layout="mirror")
    small = make_busi(tmp_path / "small", layout="mirror", counts={"malignant": 1, "normal": 1}, seed=3)
    _, out = run_fetch(big.root, tmp_path)
    rows, out = run_fetch(small.root, tmp_path)
    assert [r["id"] for r in rows] == ["malignant (1)", "normal (1)"]
    assert_fetched(rows, out, small)  # nothing of the first fetch is left over
    assert sorted(p.name for p in out.parent.iterdir()) == ["raw"]


def test_source_nested_below_a_top_folder(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src" / "Dataset_BUSI_with_GT", layout="original")
    rows, out = run_fetch(tmp_path / "src", tmp_path)
    assert_fetched(rows, out, fake)


def test_dot_files_and_macosx_folders_ignored(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src", layout="mirror")
    (fake.root / "__MACOSX").mkdir()
    (fake.root / "__MACOSX" / "junk").write_text("x")
    (fake.root / "benign" / ".DS_Store").write_text("x")
    rows, out = run_fetch(fake.root, tmp_path)
    assert_fetched(rows, out, fake)


# ---------------------------------------------------------------------------------------------------- bad input


def _truncate(fake):
    path = fake.image_files["benign (2)"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "unreadable or truncated image"


def _garbage(fake):
    path = fake.image_files["malignant (2)"]
    path.write_bytes(b"this is not a png at all")
    return path, "unreadable or truncated image"


def _no_mask(fake):
    for p in fake.mask_files["malignant (1)"]:
        p.unlink()
    return fake.image_files["malignant (1)"], "image without mask"


def _no_image(fake):
    fake.image_files["normal (2)"].unlink()
    return fake.mask_files["normal (2)"][0], "mask without image"


def _mask_size(fake):
    path = fake.mask_files["benign (3)"][0]
    Image.fromarray(np.zeros((30, 52), np.uint8)).save(path)
    return path, "mask size 52x30 differs from its image benign (3).png"


def _second_mask_size(fake):
    path = fake.mask_files["benign (1)"][1]
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(path)
    return path, "differs from its image"


def _non_binary(fake):
    path = fake.mask_files["malignant (2)"][0]
    values = np.zeros((fake.images["malignant (2)"].shape), np.uint8)
    values[:5] = 128
    values[5:10] = 255
    Image.fromarray(values, "L").save(path)
    return path, "non-binary mask, values 0, 128, 255"


def _unknown_class(fake):
    (fake.root / "benignn").mkdir()
    return fake.root / "benignn", "unknown class folder"


def _not_an_image(fake):
    path = fake.root / "normal" / "notes.txt"
    path.write_text("x")
    return path, "not an image file"


def _duplicate_stem(fake):
    path = fake.root / "benign" / "benign (2).jpg"
    Image.fromarray(fake.images["benign (2)"]).save(path)
    return fake.image_files["benign (2)"], "a second image named 'benign (2)' (benign (2).jpg)"


BAD = [_truncate, _garbage, _no_mask, _no_image, _mask_size, _second_mask_size, _non_binary, _unknown_class,
       _not_an_image, _duplicate_stem]


@pytest.mark.parametrize("spoil", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_bad_input_names_the_file(tmp_path, make_busi, spoil):
    fake = make_busi(tmp_path / "src", layout="original")
    path, what = spoil(fake)
    with pytest.raises(DataError) as err:
        run_fetch(fake.root, tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    assert what in message
    assert_nothing_written(tmp_path)


def test_bad_input_keeps_previous_output(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src", layout="original")
    rows, out = run_fetch(fake.root, tmp_path)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _non_binary(fake)
    with pytest.raises(DataError, match="non-binary"):
        run_fetch(fake.root, tmp_path)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["raw"]


def test_empty_class_folders(tmp_path):
    for cls in busi.CLASSES:
        (tmp_path / "src" / cls).mkdir(parents=True)
    with pytest.raises(DataError, match=r"^.*/src: empty source, no images found"):
        run_fetch(tmp_path / "src", tmp_path)
    assert_nothing_written(tmp_path)


def test_empty_directory(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError) as err:
        run_fetch(tmp_path / "src", tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'src'}: no class folder")
    assert_nothing_written(tmp_path)


def test_nonexistent_source(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(DataError) as err:
        run_fetch(missing, tmp_path)
    assert str(err.value).startswith(f"{missing}: fetch.source does not exist")
    assert_nothing_written(tmp_path)


def test_sha256_on_a_directory_is_refused(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src")
    with pytest.raises(DataError, match="applies to a .zip or URL source"):
        run_fetch(fake.root, tmp_path, sha="0" * 64)


def test_file_that_is_not_a_zip(tmp_path):
    path = tmp_path / "data.zip"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError) as err:
        run_fetch(path, tmp_path)
    assert str(err.value).startswith(f"{path}: not a directory or a .zip archive")


# ---------------------------------------------------------------------------------------------------- SHA256SUMS


def write_sums(fake) -> Path:
    files = sorted(p for p in fake.root.rglob("*") if p.is_file())
    lines = [f"{sha256(p)}  {p.relative_to(fake.root).as_posix()}" for p in files]
    (fake.root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return fake.root / "SHA256SUMS"


def test_sha256sums_pass(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src")
    write_sums(fake)
    rows, out = run_fetch(fake.root, tmp_path)
    assert_fetched(rows, out, fake)


def test_sha256sums_mismatch_names_the_file(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src")
    sums = write_sums(fake)
    changed = fake.image_files["malignant (1)"]
    Image.fromarray(255 - fake.images["malignant (1)"]).save(changed, lossless=True)  # still a valid image
    with pytest.raises(DataError) as err:
        run_fetch(fake.root, tmp_path)
    assert str(err.value) == f"{changed}: sha256 does not match {sums}; the file is corrupt or was changed"
    assert_nothing_written(tmp_path)


def test_sha256sums_missing_file_names_it(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src")
    sums = write_sums(fake)
    with open(sums, "a") as fh:
        fh.write(f"{'0' * 64}  benign/benign (99)_mask.png\n")
    with pytest.raises(DataError) as err:
        run_fetch(fake.root, tmp_path)
    assert str(err.value) == f"{fake.root / 'benign' / 'benign (99)_mask.png'}: listed in {sums} but missing"


def test_real_mirror_checksums_pass(busi_mirror):
    busi.verify_checksums(busi_mirror)  # raises on any mismatch
    listed = (busi_mirror / "SHA256SUMS").read_text().splitlines()
    assert len(listed) == 780 + 798


# ---------------------------------------------------------------------------------------------------- zip and URL


def make_zip(fake, path: Path, top: str = "Dataset_BUSI_with_GT") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(fake.root.rglob("*")):
            archive.write(file, f"{top}/{file.relative_to(fake.root).as_posix()}")
    return path


def test_zip_source(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src", layout="original")
    archive = make_zip(fake, tmp_path / "busi.zip")
    rows, out = run_fetch(archive, tmp_path)
    assert_fetched(rows, out, fake)
    assert sorted(p.name for p in out.parent.iterdir()) == ["raw"]  # the extraction folder is gone
    rows, out = run_fetch(archive, tmp_path, sha=sha256(archive).upper(), name="raw2")
    assert_fetched(rows, out, fake)


def test_zip_sha256_mismatch(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src")
    archive = make_zip(fake, tmp_path / "busi.zip")
    with pytest.raises(DataError) as err:
        run_fetch(archive, tmp_path, sha="0" * 64)
    assert str(err.value) == f"{archive}: sha256 is {sha256(archive)}, fetch.sha256 expects {'0' * 64}"
    assert_nothing_written(tmp_path)


class Server:
    """A local HTTP server in a thread serving a few byte strings, counting the requests per path."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests[self.path] = server.requests.get(self.path, 0) + 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(server.announced.get(self.path, len(body))))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.announced: dict[str, int] = {}
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def test_url_source_downloads_once(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src", layout="original")
    data = make_zip(fake, tmp_path / "busi.zip").read_bytes()
    with Server({"/files/busi.zip": data}) as server:
        url = server.url("/files/busi.zip")
        rows, out = run_fetch(url, tmp_path, sha=hashlib.sha256(data).hexdigest())
        assert_fetched(rows, out, fake)
        assert server.requests == {"/files/busi.zip": 1}
        cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
        assert [p.name for p in cached] == ["busi.zip"] and cached[0].read_bytes() == data
        rows, out = run_fetch(url, tmp_path, name="raw2")  # served from the cache
        assert_fetched(rows, out, fake)
        assert server.requests == {"/files/busi.zip": 1}


def test_url_sha256_mismatch_leaves_nothing(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src")
    data = make_zip(fake, tmp_path / "busi.zip").read_bytes()
    with Server({"/busi.zip": data}) as server:
        with pytest.raises(DataError, match="fetch.sha256 expects 0000"):
            run_fetch(server.url("/busi.zip"), tmp_path, sha="0" * 64)
        assert_nothing_written(tmp_path)
        assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # nothing bad cached
        rows, _ = run_fetch(server.url("/busi.zip"), tmp_path, sha=hashlib.sha256(data).hexdigest())
        assert len(rows) == 7
        assert server.requests == {"/busi.zip": 2}


def test_url_not_found_leaves_nothing(tmp_path):
    with Server({}) as server:
        with pytest.raises(DataError, match="404"):
            run_fetch(server.url("/missing.zip"), tmp_path)
        assert server.requests == {"/missing.zip": 1}
    assert_nothing_written(tmp_path)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_url_serving_something_else_fails_cleanly(tmp_path):
    with Server({"/busi.zip": b"<html>login page</html>"}) as server:
        with pytest.raises(DataError, match="not a directory or a .zip archive"):
            run_fetch(server.url("/busi.zip"), tmp_path)
    assert_nothing_written(tmp_path)


def test_url_truncated_download_is_not_cached(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src")
    data = make_zip(fake, tmp_path / "busi.zip").read_bytes()
    with Server({"/busi.zip": data[: len(data) // 2]}) as server:
        server.announced["/busi.zip"] = len(data)  # the connection drops half way
        with pytest.raises(DataError, match="incomplete"):
            run_fetch(server.url("/busi.zip"), tmp_path)
        assert_nothing_written(tmp_path)
        server.files["/busi.zip"] = data  # the server recovers; the next fetch must download again
        server.announced.clear()
        rows, _ = run_fetch(server.url("/busi.zip"), tmp_path)
        assert len(rows) == 7


def test_read_mask_grey_with_alpha_uses_grey_not_alpha(tmp_path):
    grey = np.zeros((4, 4), np.uint8)
    grey[1, 2] = 255
    path = tmp_path / "la_mask.png"
    Image.fromarray(np.stack([grey, np.full_like(grey, 255)], axis=-1), mode="LA").save(path)
    assert busi.read_mask(path).sum() == 1 and busi.read_mask(path)[1, 2]


def test_one_name_in_two_class_folders_is_refused(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src", counts={"benign": 2, "malignant": 1, "normal": 1})
    for suffix in (".webp", "_mask.png"):
        shutil.copy(fake.root / "benign" / f"benign (1){suffix}", fake.root / "malignant" / f"benign (1){suffix}")
    with pytest.raises(DataError, match=r"malignant/benign \(1\)\.webp: the name 'benign \(1\)' is also used by"):
        busi.fetch(str(fake.root), tmp_path / "raw", tmp_path / "cache")


def test_corrupt_zip_is_a_data_error(tmp_path, make_busi):
    fake = make_busi(tmp_path / "src")
    archive = make_zip(fake, tmp_path / "busi.zip")
    data = bytearray(archive.read_bytes())
    data[200:260] = b"\0" * 60  # damage a member's compressed bytes, keep the directory readable
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match="busi.zip"):
        busi.fetch(str(archive), tmp_path / "raw", tmp_path / "cache")
