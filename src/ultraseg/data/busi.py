"""Read the BUSI dataset (the compact mirror or the original ``Dataset_BUSI_with_GT`` archive) into a normalised set.

Layout expected below the dataset root (Al-Dhabyani et al., Data in Brief 28 (2020) 104863)::

    benign/benign (1).png  benign/benign (1)_mask.png  benign/benign (1)_mask_1.png ...
    malignant/...  normal/...

Images may be RGB, RGBA or greyscale PNG, or WebP (mirror); masks 1-bit, 8-bit grey, RGB or RGBA PNG. An image
with several lesions has one mask file per lesion; its lesion mask is their union. The normalised output is::

    <out>/images/<id>.png   8-bit greyscale, original resolution
    <out>/masks/<id>.png    0/255 union of the image's mask files
    <out>/manifest.csv      id,class,file,width,height,mask_files,sha256,source,group

:func:`write_raw` writes that set from the :class:`Entry` items of any number of sources (the fetch stage adds
labelled folders in the other layouts, :mod:`ultraseg.data.labelled`).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from ultraseg.errors import DataError
from ultraseg.io import atomic_path, read_csv, write_csv

CLASSES = ("benign", "malignant", "normal")
IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$")
MANIFEST_COLUMNS = ("id", "class", "file", "width", "height", "mask_files", "sha256", "source", "group")
IGNORED_NAMES = {"__MACOSX"}


@dataclass(frozen=True)
class Record:
    id: str
    cls: str | None
    image: Path
    masks: tuple[Path, ...]


@dataclass(frozen=True)
class Entry:
    """One image of any source on its way into the normalised set: where it is and how to read it."""

    id: str
    cls: str | None
    """None: ``lesion`` or ``normal``, from the mask."""
    source: str
    file: str
    """The image's path below its source's root, for the manifest."""
    image: Path
    mask_files: int
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    """The 8-bit greyscale image and its boolean lesion mask of the same size."""
    group: str | None = None
    """A patient or study id: images of one group never go to different splits."""


# ---------------------------------------------------------------------------------------------------- sources


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str | None) -> None:
    if expected is not None and (actual := sha256_file(path)) != expected.lower():
        raise DataError(f"{path}: sha256 is {actual}, fetch.sha256 expects {expected}")


def download(url: str, cache_dir: Path, sha256: str | None = None) -> Path:
    """Stream ``url`` into ``cache_dir`` with a progress bar; reuse a cached copy that passes the checksum."""
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = cache_dir / hashlib.sha256(url.encode()).hexdigest()[:12] / name
    if target.exists():
        _check_sha256(target, sha256)
        return target
    try:
        with atomic_path(target) as tmp, urllib.request.urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with open(tmp, "wb") as fh, tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    fh.write(block)
                    received += len(block)
                    bar.update(len(block))
            if total is not None and received != total:  # a dropped connection ends read() quietly
                raise DataError(f"{url}: download incomplete, {received} of {total} bytes; try again")
            _check_sha256(tmp, sha256)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise DataError(f"{url}: download failed ({err})") from None
    return target


def find_root(path: Path) -> Path:
    """The folder below ``path`` (itself included) that holds the class folders."""
    candidates = [path, *sorted(p for p in path.rglob("*") if p.is_dir() and not _ignored(p))]
    for folder in candidates:
        if any((folder / cls).is_dir() for cls in CLASSES):
            return folder
    raise DataError(f"{path}: no class folder ({', '.join(CLASSES)}) found; is this the BUSI dataset?")


def _ignored(path: Path) -> bool:
    return any(part.startswith(".") or part in IGNORED_NAMES for part in path.parts[-1:])


def scan(root: Path) -> list[Record]:
    """Pair every image with its mask files; reject anything that does not fit the BUSI layout."""
    for sub in sorted(root.iterdir()):
        if sub.is_dir() and not _ignored(sub) and sub.name not in CLASSES:
            raise DataError(f"{sub}: unknown class folder; expected only {', '.join(CLASSES)}")
    records = []
    for cls in CLASSES:
        folder = root / cls
        if folder.is_dir():
            records.extend(scan_folder(folder, cls))
    if not records:
        raise DataError(f"{root}: empty source, no images found in {', '.join(CLASSES)}")
    seen: dict[str, Record] = {}
    for record in records:
        if record.id in seen:
            raise DataError(f"{record.image}: the name {record.id!r} is also used by {seen[record.id].image}")
        seen[record.id] = record
    return records


def scan_folder(folder: Path, cls: str | None) -> list[Record]:
    """Pair the images of one folder with their ``<stem>_mask*`` files, all of class ``cls``."""
    images: dict[str, Path] = {}
    masks: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if _ignored(path) or not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not an image file; expected one of {', '.join(IMAGE_SUFFIXES)}")
        if match := MASK_RE.match(path.stem):
            masks.setdefault(match["stem"], []).append(path)
        elif path.stem in images:
            raise DataError(f"{path}: a second image named {path.stem!r} ({images[path.stem].name})")
        else:
            images[path.stem] = path
    for stem, files in masks.items():
        if stem not in images:
            raise DataError(f"{files[0]}: mask without image (no {stem}.<ext> in {folder})")
    for stem, path in images.items():
        if stem not in masks:
            raise DataError(f"{path}: image without mask (expected {stem}_mask.png beside it)")
    return [Record(stem, cls, images[stem], tuple(sorted(masks[stem]))) for stem in images]


# ---------------------------------------------------------------------------------------------------- decoding


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now: Image.open is lazy and would hide a truncated file
    except Exception as err:  # PIL raises several types for broken files
        raise DataError(f"{path}: unreadable or truncated image ({err})") from None
    return image


def read_image(path: Path) -> np.ndarray:
    """An image as 8-bit greyscale (colour converted with ITU-R 601 luma, as the mirror was)."""
    image = _open(path)
    if image.mode not in ("L", "1"):
        image = image.convert("RGB").convert("L")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """A mask as a boolean array; 1-bit, grey, RGB or RGBA files whose pixels take exactly two levels."""
    image = _open(path)
    array = np.asarray(image)
    if image.mode == "1":
        return array.astype(bool)
    if array.ndim == 3:
        colour = len(image.getbands()) - ("A" in image.getbands())  # alpha is only opacity, never the mask
        array = array[..., :colour].max(axis=2)
    levels = np.unique(array)
    if not (set(levels.tolist()) <= {0, 255} or set(levels.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in levels[:6]) + (" ..." if len(levels) > 6 else "")
        raise DataError(f"{path}: non-binary mask, values {shown}; expected only 0 and 255 (or 0 and 1)")
    return array > 0


def load_record(record: Record) -> tuple[np.ndarray, np.ndarray]:
    image = read_image(record.image)
    mask = np.zeros(image.shape, dtype=bool)
    for path in record.masks:
        part = read_mask(path)
        if part.shape != image.shape:
            raise DataError(
                f"{path}: mask size {part.shape[1]}x{part.shape[0]} differs from its image "
                f"{record.image.name} {image.shape[1]}x{image.shape[0]}"
            )
        mask |= part
    return image, mask


def verify_checksums(root: Path) -> None:
    """Check files against a ``SHA256SUMS`` beside the class folders, as the mirror ships one."""
    sums = root / "SHA256SUMS"
    if not sums.exists():
        return
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or len(fields[0]) != 64:
            raise DataError(f"{sums}: malformed line {line!r}; expected '<sha256>  <path>'")
        expected, name = fields
        path = root / name.lstrip("*")
        if not path.exists():
            raise DataError(f"{path}: listed in {sums} but missing")
        if sha256_file(path) != expected:
            raise DataError(f"{path}: sha256 does not match {sums}; the file is corrupt or was changed")


# ---------------------------------------------------------------------------------------------------- fetch


def fetch(source: str, out_dir: Path, cache_dir: Path, sha256: str | None = None) -> list[dict]:
    """Read ``source`` (directory, ``.zip`` or http(s) URL) and write the normalised set to ``out_dir``."""
    with opened(source, cache_dir, sha256, out_dir.parent) as root:
        return write_raw(entries(root, source_name(source)), out_dir)


@contextmanager
def opened(source: str, cache_dir: Path, sha256: str | None, scratch: Path) -> Iterator[Path]:
    """The dataset root of ``source``: a directory as it is, a ``.zip`` (or a download of one) extracted below
    ``scratch`` for as long as the context lasts."""
    if source.startswith(("http://", "https://")):
        path = download(source, cache_dir, sha256)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"{path}: fetch.source does not exist (a directory, a .zip or an http(s) URL)")
        if path.is_dir() and sha256 is not None:
            raise DataError(f"{path}: fetch.sha256 applies to a .zip or URL source, not a directory")
        if path.is_file():
            _check_sha256(path, sha256)
    if path.is_dir():
        yield find_root(path)
        return
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a directory or a .zip archive")
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".extract.") as tmp:
        try:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(tmp)
        except (zipfile.BadZipFile, OSError) as err:
            raise DataError(f"{path}: corrupt .zip archive ({err})") from None
        yield find_root(Path(tmp))


def source_name(source: str) -> str:
    """What the manifest calls a source: its folder's or archive's name (``busi`` for the mirror)."""
    name = Path(urllib.parse.urlparse(source).path if "://" in source else source).name
    return name.removesuffix(".zip").removesuffix(".ZIP") or "source"


def entries(root: Path, source: str) -> list[Entry]:
    """The images of a BUSI-layout dataset root, checked against its ``SHA256SUMS`` when it ships one."""
    records = scan(root)
    verify_checksums(root)
    return [Entry(r.id, r.cls, source, r.image.relative_to(root).as_posix(), r.image, len(r.masks),
                  partial(load_record, r)) for r in records]


def write_raw(items: Sequence[Entry], out_dir: Path) -> list[dict]:
    """Write every entry's 8-bit image and 0/255 mask and the manifest to ``out_dir``, all or nothing."""
    seen: dict[str, Entry] = {}
    for item in items:
        if item.id in seen:
            raise DataError(f"{item.image}: the id {item.id!r} is also used by {seen[item.id].image}")
        seen[item.id] = item
    rows = []
    with atomic_path(out_dir) as tmp:
        for item in tqdm(items, desc="fetch", unit="img"):
            image, mask = item.load()
            for folder, array in (("images", image), ("masks", mask.astype(np.uint8) * 255)):
                target = tmp / folder / f"{item.id}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(target), array)
            cls = item.cls or ("lesion" if mask.any() else "normal")
            rows.append({
                "id": item.id, "class": cls, "file": item.file, "width": image.shape[1], "height": image.shape[0],
                "mask_files": item.mask_files, "sha256": sha256_file(item.image), "source": item.source,
                "group": item.group or "",
            })
        write_csv(tmp / "manifest.csv", rows, MANIFEST_COLUMNS)
    return rows


def read_manifest(path: Path) -> list[dict]:
    """Manifest rows with integer columns parsed."""
    if not path.exists():
        raise DataError(f"{path}: manifest missing; run the fetch stage first (dvc repro fetch)")
    rows = read_csv(path)
    for row in rows:
        for key in ("width", "height", "mask_files"):
            row[key] = int(row[key])
    return rows


def load_raw(raw_dir: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """One normalised image and its boolean mask from the fetch stage's output."""
    image = cv2.imread(str(raw_dir / "images" / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
    mask = cv2.imread(str(raw_dir / "masks" / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
    if image is None or mask is None:
        raise DataError(f"{raw_dir}: image or mask of {image_id!r} missing; re-run the fetch stage")
    return image, mask > 0
