"""Labelled scans in a user's own folder: the one reader for scoring a model on them.

Three layouts, detected in this order (:func:`detect`) or named:

``csv``
    A CSV file (given itself, or the only ``*.csv`` in the folder) with columns ``image`` and ``mask`` and, optionally,
    ``class``, ``group`` and ``pixel_spacing_mm``; paths are relative to the CSV's folder. Several rows for one
    image give several masks, which are joined; an empty ``mask`` cell marks a normal image.
``folders``
    ``images/`` and ``masks/`` holding files of the same stem (``masks/<stem>_mask*.<ext>`` too, joined).
``busi``
    BUSI's own convention, ``<stem>.png`` beside ``<stem>_mask.png``, ``<stem>_mask_1.png`` ..., in class folders
    (``benign/``, ``malignant/``, ``normal/``) or all in one folder.

Images may be in any format the runtime reads (PNG, JPEG, BMP, TIFF, WebP; 8 or 16 bit; grey or colour). Masks may be
of any size with the image's aspect ratio (resized to the image, nearest neighbour) and must be binary: 0 and 1,
0 and 255, or 0 and 65535. A mask that is all zero marks a normal image. Without a class column, the class is
``lesion`` or ``normal`` from the mask.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ultraseg.data import busi
from ultraseg.errors import DataError
from ultraseg.runtime.sources import IMAGE_SUFFIXES, read_image, to_grey

Layout = Literal["auto", "csv", "folders", "busi"]
LAYOUTS: tuple[str, ...] = ("auto", "csv", "folders", "busi")
CSV_COLUMNS = ("image", "mask", "class", "group", "pixel_spacing_mm")
ASPECT_TOLERANCE = 0.02
"""A mask whose aspect ratio differs from its image's by more than this (relative) cannot be the image's mask."""


@dataclass(frozen=True)
class Case:
    """One labelled image: where it and its masks are, and what the layout says about it."""

    id: str
    image: Path
    masks: tuple[Path, ...]
    cls: str | None = None
    group: str | None = None
    spacing_mm: float | None = None


def detect(path: Path) -> str:
    """The layout of ``path``: ``csv`` for a CSV file or a folder with exactly one, ``folders`` for a folder with
    ``images/`` and ``masks/``, else ``busi``."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"{path}: not a folder or a CSV file")
    if not path.is_dir():
        raise DataError(f"{path}: no such folder or file")
    if len(list(path.glob("*.csv"))) == 1:
        return "csv"
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "folders"
    return "busi"


def scan(path: str | Path, layout: Layout = "auto") -> list[Case]:
    """Every labelled image below ``path`` in ``layout`` (``auto``: :func:`detect`), in a stable order."""
    path = Path(path)
    layout = detect(path) if layout == "auto" else layout
    readers = {"csv": _scan_csv, "folders": _scan_folders, "busi": _scan_busi}
    if layout not in readers:
        raise DataError(f"{path}: unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    cases = readers[layout](path)
    if not cases:
        raise DataError(f"{path}: no labelled image found ({layout} layout)")
    return cases


def _scan_csv(path: Path) -> list[Case]:
    table = path if path.is_file() else next(path.glob("*.csv"))
    with open(table, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("image", "mask") if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{table}: missing column(s) {', '.join(missing)}; expected {', '.join(CSV_COLUMNS)}")
        rows = list(reader)
    cases: dict[str, Case] = {}
    for line, row in enumerate(rows, start=2):
        image = _existing(table.parent / row["image"].strip(), table, line)
        mask = row["mask"].strip()
        masks = (_existing(table.parent / mask, table, line),) if mask else ()
        case = Case(_relative_id(image, table.parent), image, masks, (row.get("class") or "").strip() or None,
                    (row.get("group") or "").strip() or None, _spacing(row.get("pixel_spacing_mm"), table, line))
        if case.id in cases:  # another mask of the same image
            earlier = cases[case.id]
            if (earlier.cls, earlier.group, earlier.spacing_mm) != (case.cls, case.group, case.spacing_mm):
                raise DataError(f"{table}:{line}: {row['image']} is listed again with another class, group or spacing")
            case = Case(case.id, image, earlier.masks + masks, case.cls, case.group, case.spacing_mm)
        cases[case.id] = case
    return list(cases.values())


def _existing(path: Path, table: Path, line: int) -> Path:
    if not path.is_file():
        raise DataError(f"{table}:{line}: {path} not found")
    return path


def _spacing(text: str | None, table: Path, line: int) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise DataError(f"{table}:{line}: pixel_spacing_mm must be a positive number of mm, got {text!r}")
    return value


def _relative_id(image: Path, root: Path) -> str:
    """The image's path below ``root`` without its suffix, with ``/``: unique where stems repeat in subfolders."""
    return image.relative_to(root).with_suffix("").as_posix()


def _scan_folders(path: Path) -> list[Case]:
    images = _images_by_stem(path / "images")
    masks: dict[str, list[Path]] = {}
    for mask in sorted((path / "masks").iterdir()):
        if mask.is_file() and not mask.name.startswith("."):
            match = busi.MASK_RE.match(mask.stem)
            masks.setdefault(match["stem"] if match and match["stem"] in images else mask.stem, []).append(mask)
    for stem, files in masks.items():
        if stem not in images:
            raise DataError(f"{files[0]}: mask without image (no {stem}.<ext> in {path / 'images'})")
    for stem, image in images.items():
        if stem not in masks:
            raise DataError(f"{image}: image without mask (no {stem}.<ext> in {path / 'masks'})")
    return [Case(stem, image, tuple(masks[stem])) for stem, image in images.items()]


def _images_by_stem(folder: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for image in sorted(folder.iterdir()):
        if not image.is_file() or image.name.startswith("."):
            continue
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{image}: not an image file; expected one of {', '.join(IMAGE_SUFFIXES)}")
        if image.stem in images:
            raise DataError(f"{image}: a second image named {image.stem!r} ({images[image.stem].name})")
        images[image.stem] = image
    return images


def _scan_busi(path: Path) -> list[Case]:
    if any((path / cls).is_dir() for cls in busi.CLASSES):
        records = busi.scan(path)
    else:
        records = busi.scan_folder(path, None)
    return [Case(r.id, r.image, r.masks, r.cls) for r in records]


# ---------------------------------------------------------------------------------------------------- reading


def read_reference(paths: Sequence[Path], shape: tuple[int, int]) -> np.ndarray:
    """The union of the binary masks at ``paths``, each resized (nearest) to ``shape``; all-False for none."""
    union = np.zeros(shape, bool)
    for path in paths:
        union |= _fit(read_binary_mask(path), shape, path)
    return union


def read_binary_mask(path: Path) -> np.ndarray:
    """A mask file as booleans: its colour channels' maximum (alpha ignored), which must take two levels only."""
    array = read_image(path)
    if array.ndim == 3:
        array = array[..., : 3 if array.shape[2] >= 3 else 1].max(axis=2)
    levels = set(np.unique(array).tolist())
    top = np.iinfo(array.dtype).max if np.issubdtype(array.dtype, np.integer) else 1
    if not (levels <= {0, 1} or levels <= {0, 255} or levels <= {0, top}):
        shown = ", ".join(str(v) for v in sorted(levels)[:6]) + (" ..." if len(levels) > 6 else "")
        raise DataError(f"{path}: non-binary mask, values {shown}; expected 0 and 1 or 0 and 255")
    return array > 0


def _fit(mask: np.ndarray, shape: tuple[int, int], path: Path) -> np.ndarray:
    if mask.shape == shape:
        return mask
    (mh, mw), (h, w) = mask.shape, shape
    if abs((mw / mh) / (w / h) - 1) > ASPECT_TOLERANCE:
        raise DataError(f"{path}: mask size {mw}x{mh} cannot be matched to its image's {w}x{h} "
                        "(another aspect ratio)")
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0


def load(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The image as stored (what the runtime takes) and its boolean reference at the image's size."""
    image = read_image(case.image)
    return image, read_reference(case.masks, image.shape[:2])


def entries(path: str | Path, source: str) -> list[busi.Entry]:
    """The labelled images below ``path`` as training data of the fetch stage: ids ``<source>/<id>``, images in
    8-bit grey (as the runtime converts them), references as :func:`load` reads them."""
    root = Path(path)
    base = root if root.is_dir() else root.parent
    return [busi.Entry(f"{source}/{case.id}", case.cls, source, case.image.relative_to(base).as_posix(), case.image,
                       len(case.masks), partial(_load_grey, case), case.group) for case in scan(root)]


def _load_grey(case: Case) -> tuple[np.ndarray, np.ndarray]:
    image, reference = load(case)
    return to_grey(image), reference


def class_of(case: Case, reference: np.ndarray) -> str:
    """The case's class, or ``lesion`` / ``normal`` from its reference when the layout gives none."""
    return case.cls or ("lesion" if reference.any() else "normal")
