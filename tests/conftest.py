"""Shared fixtures: where the repository and the BUSI mirror are, one torch thread, and tiny BUSI-like datasets."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
MIRROR = REPO_ROOT.parent / "shared" / "data" / "busi"
CLASSES = ("benign", "malignant", "normal")
TINY = [4, 8, 16]
"""Channel widths small enough that every model variant builds and runs in milliseconds."""
STAGES = tuple(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
"""The pipeline's stages, in dvc.yaml's order (which is the order they run in)."""
SCRIPTS = tuple(stage for stage in STAGES if (REPO_ROOT / "stages" / f"{stage}.py").is_file())
"""The stages that run a script of their own name (``deploy_accurate`` runs ``deploy``'s with ``--profile``)."""


def load_script(path: str | Path) -> ModuleType:
    """A script under the repository (stages/ and scripts/ are not packages) as a module."""
    path = REPO_ROOT / path
    spec = importlib.util.spec_from_file_location(f"{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def busi_mirror() -> Path:
    """The read-only compact BUSI mirror; tests that need real images are skipped where it is absent."""
    if not all((MIRROR / cls).is_dir() for cls in CLASSES):
        pytest.skip(f"BUSI mirror not found at {MIRROR}")
    return MIRROR


def _merge(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def shipped_data(overrides: dict | None = None) -> dict:
    """The project's params.yaml as a dict, with ``overrides`` merged in (mappings merge, other values replace)."""
    return _merge(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), overrides or {})


def shipped_params(overrides: dict | None = None):
    """The params that ship, with ``overrides`` merged in: the one way tests get params, so they run what users run
    and change only what must be tiny (sizes, widths, epochs). Unknown keys and bad values fail as in params.yaml."""
    from ultraseg import params

    return params.from_dict(shipped_data(overrides))


def shipped(section: str, **overrides):
    """One section of :func:`shipped_params` by dotted name (``"train.model"``), with ``overrides`` of its keys."""
    *parents, name = section.split(".")
    nested = {name: overrides}
    for parent in reversed(parents):
        nested = {parent: nested}
    value = shipped_params(nested)
    for part in section.split("."):
        value = getattr(value, part)
    return value


def write_params(path: Path, overrides: dict | None = None) -> Path:
    """:func:`shipped_data` written to ``path``: a params file must set every key, so tests change keys of the
    real one."""
    path.write_text(yaml.safe_dump(shipped_data(overrides), sort_keys=False))
    return path


@pytest.fixture
def params_file():
    """Factory: ``params_file(path, overrides=None) -> path``, a complete params file (:func:`write_params`)."""
    return write_params


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny tensors run fastest on one thread, and the test machine has two cores shared with other work."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------- make_busi


@dataclass
class FakeBusi:
    """A tiny BUSI-like dataset on disk and what a correct reader must get out of it."""

    root: Path
    layout: str
    images: dict[str, np.ndarray] = field(default_factory=dict)
    """id -> expected 8-bit greyscale image."""
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    """id -> expected boolean lesion mask (union of the mask files)."""
    classes: dict[str, str] = field(default_factory=dict)
    image_files: dict[str, Path] = field(default_factory=dict)
    mask_files: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return list(self.images)


def speckle_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A grey ramp times gamma speckle with a dark rounded 'lesion': looks enough like an ultrasound frame."""
    yy, xx = np.mgrid[0:height, 0:width]
    tissue = 60 + 100 * yy / height + 20 * np.sin(xx / 5.0)
    lesion = ((yy - height / 2) / (height / 4)) ** 2 + ((xx - width / 2) / (width / 4)) ** 2 < 1
    tissue = np.where(lesion, tissue * 0.35, tissue)
    speckle = rng.gamma(shape=4.0, scale=0.25, size=(height, width))
    return np.clip(tissue * speckle, 0, 255).astype(np.uint8)


def _rectangle_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    mask[top : top + rng.integers(4, height // 2), left : left + rng.integers(4, width // 2)] = True
    return mask


def _save_mask(mask: np.ndarray, path: Path, kind: str) -> None:
    """``kind``: ``1bit``, ``grey`` (8-bit L), ``rgb`` (8-bit RGB) or ``rgba`` (RGB plus an opaque alpha)."""
    grey = mask.astype(np.uint8) * 255
    if kind == "1bit":
        Image.fromarray(grey).convert("1").save(path)
    elif kind == "grey":
        Image.fromarray(grey, "L").save(path)
    elif kind == "rgb":
        Image.fromarray(np.dstack([grey] * 3), "RGB").save(path)
    elif kind == "rgba":
        alpha = np.full_like(grey, 255)
        Image.fromarray(np.dstack([grey, grey, grey, alpha]), "RGBA").save(path)
    else:
        raise ValueError(kind)


MASK_KINDS = ("rgb", "rgba", "1bit")


def build_busi(
    root: Path, layout: str = "mirror", counts: dict[str, int] | None = None, seed: int = 0
) -> FakeBusi:
    """Write a tiny BUSI-like dataset below ``root`` (``root/benign``, ``root/malignant``, ``root/normal``).

    ``mirror``: greyscale lossless WebP images and 1-bit PNG masks, as in the compact mirror.
    ``original``: RGB PNG images (grey in all channels, except one with a coloured overlay) and masks that cycle
    through 8-bit RGB, RGBA and 1-bit PNG; ``benign (1)`` has two lesions, ``_mask.png`` and ``_mask_1.png``.
    Images are about 40 x 52 pixels, each a slightly different size. Normal images get empty masks.
    """
    if layout not in ("mirror", "original"):
        raise ValueError(layout)
    counts = counts or {"benign": 3, "malignant": 2, "normal": 2}
    rng = np.random.default_rng(seed)
    fake = FakeBusi(root, layout)
    k = 0
    for cls, count in counts.items():
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, count + 1):
            image_id = f"{cls} ({n})"
            height, width = 40 + 2 * (k % 3), 52 - 2 * (k % 2)
            grey = speckle_image(rng, height, width)
            if cls == "normal":
                parts = [np.zeros((height, width), bool)]
            elif image_id == "benign (1)":
                first = np.zeros((height, width), bool)
                first[2:10, 3:15] = True
                second = np.zeros((height, width), bool)
                second[25:35, 30:45] = True
                parts = [first, second]
            else:
                parts = [_rectangle_mask(rng, height, width)]
            if layout == "mirror":
                image_path = folder / f"{image_id}.webp"
                Image.fromarray(grey, "L").save(image_path, lossless=True)
                expected = grey
                kinds = ["1bit"] * len(parts)
            else:
                image_path = folder / f"{image_id}.png"
                rgb = np.dstack([grey] * 3)
                if image_id == "malignant (1)":  # a coloured caliper mark, as 16 originals carry
                    rgb[5:8, 5:30] = (230, 200, 20)
                Image.fromarray(rgb, "RGB").save(image_path)
                expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
                kinds = [MASK_KINDS[(k + j) % len(MASK_KINDS)] for j in range(len(parts))]
            mask_paths = []
            for j, (part, kind) in enumerate(zip(parts, kinds)):
                suffix = "_mask" if j == 0 else f"_mask_{j}"
                path = folder / f"{image_id}{suffix}.png"
                _save_mask(part, path, kind)
                mask_paths.append(path)
            fake.images[image_id] = expected
            fake.masks[image_id] = np.logical_or.reduce(parts)
            fake.classes[image_id] = cls
            fake.image_files[image_id] = image_path
            fake.mask_files[image_id] = mask_paths
            k += 1
    return fake


@pytest.fixture
def make_busi():
    """Factory: ``make_busi(root, layout="mirror" | "original", counts=None, seed=0) -> FakeBusi``."""
    return build_busi


# ---------------------------------------------------------------------------------------------------- model zoo


@dataclass
class Zoo:
    """A tiny pipeline workspace: raw and preprocessed data, a split, and every model variant's file."""

    root: Path
    raw: Path
    data: Path
    split: Path
    models: Path
    masks: dict[str, np.ndarray]
    size: int


def write_raw(raw: Path, images: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> None:
    """The fetch stage's output layout (images/, masks/, manifest.csv) for the given arrays."""
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    rows = []
    for image_id, image in images.items():
        Image.fromarray(image).save(raw / "images" / f"{image_id}.png")
        Image.fromarray(masks[image_id].astype(np.uint8) * 255).save(raw / "masks" / f"{image_id}.png")
        rows.append({"id": image_id, "class": image_id.split(" ")[0], "file": f"{image_id}.png",
                     "width": image.shape[1], "height": image.shape[0], "mask_files": 1, "sha256": "-"})
    from ultraseg.io import write_csv

    write_csv(raw / "manifest.csv", rows, list(rows[0]))


def tiny_workspace(root: Path, counts: dict[str, int], size: int = 32) -> tuple[Path, Path]:
    """Raw speckle images with their lesion masks, preprocessed to ``size``, and a split: the first image of every
    class is val, the second test, the rest train. Returns (data folder, split.csv)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    lesion = ((yy - size / 2) / (size / 4)) ** 2 + ((xx - size / 2) / (size / 4)) ** 2 < 1  # speckle_image's
    images, masks, split = {}, {}, []
    for cls, count in counts.items():
        for n in range(1, count + 1):
            image_id = f"{cls} ({n})"
            images[image_id] = speckle_image(rng, size, size)
            masks[image_id] = np.zeros_like(lesion) if cls == "normal" else lesion
            split.append({"id": image_id, "class": cls, "split": {1: "val", 2: "test"}.get(n, "train")})
    write_raw(root / "raw", images, masks)
    from ultraseg.io import write_csv
    from ultraseg.pipeline import preprocess

    write_csv(root / "split.csv", split, ["id", "class", "split"])
    preprocess.run(root / "raw", root / "data", shipped("preprocess", size=size))
    return root / "data", root / "split.csv"


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Zoo:
    """Raw images at network size (so resizing back is exact), 3 val and 6 test cases, and untrained tiny models
    saved as every variant: teacher/student/pruned checkpoints, their ONNX files, an int8 file and the two profiles'
    deployable files (the int8 one and the teacher's with a post-processing rule)."""
    import torch

    from ultraseg import checkpoint, onnx_io, quantization
    from ultraseg.io import write_csv
    from ultraseg.models import build_model
    from ultraseg.params import to_dict
    from ultraseg.pipeline import preprocess as preprocess_stage
    from ultraseg.runtime import preprocess

    size = 32
    root = tmp_path_factory.mktemp("zoo")
    rng = np.random.default_rng(0)
    images, masks, split = {}, {}, []
    for cls, n_val, n_test in (("benign", 1, 3), ("malignant", 1, 2), ("normal", 1, 1)):
        for k in range(n_val + n_test):
            image_id = f"{cls} ({k + 1})"
            images[image_id] = speckle_image(rng, size, size)
            masks[image_id] = np.zeros((size, size), bool) if cls == "normal" else _rectangle_mask(rng, size, size)
            split.append({"id": image_id, "class": cls, "split": "val" if k < n_val else "test"})
    write_raw(root / "raw", images, masks)
    write_csv(root / "split.csv", split, ["id", "class", "split"])
    preprocess_stage.run(root / "raw", root / "data", shipped("preprocess", size=size))
    models = root / "models"
    (models / "onnx").mkdir(parents=True)
    torch.manual_seed(0)
    for network, widths in (("teacher", [8, 16]), ("student", [4, 8]), ("pruned", [4, 8])):
        config = {"name": "unet", "widths": widths, "up": "nearest"}
        meta = {"kind": network, "model": config, "size": size, "threshold": 0.5, "normalize": "zscore",
                "preprocess": to_dict(shipped("preprocess", size=size))}
        model = build_model(config).eval()
        checkpoint.save(models / f"{network}.pt", model, meta)
        onnx_io.export(model, models / "onnx" / f"{network}.onnx", shipped("export"), meta)
    calibration = preprocess.normalize(np.stack(list(images.values())), "zscore")
    quantization.quantize(models / "onnx" / "pruned.onnx", models / "pruned.int8.onnx", calibration,
                          shipped("quantize", calibration_images=8))
    rule = {"postprocess": {"threshold": 0.5, "gate": 0.0, "min_area": 0.0, "keep_largest": False}}
    onnx_io.write_with_metadata(models / "pruned.int8.onnx", models / "deploy" / "ultraseg.int8.onnx", rule)
    onnx_io.write_with_metadata(models / "onnx" / "teacher.onnx", models / "deploy" / "ultraseg.accurate.onnx", rule)
    return Zoo(root, root / "raw", root / "data", root / "split.csv", models, masks, size)


def train_val_split(zoo: Zoo, path: Path) -> Path:
    """The zoo's split with its test rows made train rows (the zoo has no train split)."""
    from ultraseg.io import read_csv, write_csv

    rows = [r | {"split": "train" if r["split"] == "test" else r["split"]} for r in read_csv(zoo.split)]
    write_csv(path, rows, list(rows[0]))
    return path


# ---------------------------------------------------------------------------------------------------- other layouts


def build_csv_source(mirror: Path, dest: Path, picks: dict[str, range], groups: bool = True) -> dict[str, str]:
    """A labelled source in the generic CSV layout made of mirror images: renamed ``scan_<cls>_<n>.jpg`` JPEGs,
    masks at half size in ``masks/`` (the lesion's mask files joined), and ``labels.csv`` (image, mask, group) with
    no class column. Images ``n`` and ``n + 1`` share a group when ``groups``. Returns id -> expected class."""
    from ultraseg.data import busi

    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    rows, expected = [], {}
    for cls, numbers in picks.items():
        for n in numbers:
            record = next(r for r in busi.scan_folder(mirror / cls, cls) if r.id == f"{cls} ({n})")
            image, mask = busi.load_record(record)
            stem = f"scan_{cls}_{n}"
            Image.fromarray(image).save(dest / "images" / f"{stem}.jpg", quality=92)
            half = Image.fromarray(mask.astype(np.uint8) * 255).resize((image.shape[1] // 2, image.shape[0] // 2),
                                                                      Image.NEAREST)
            half.save(dest / "masks" / f"{stem}.png")
            rows.append({"image": f"images/{stem}.jpg", "mask": f"masks/{stem}.png",
                         "group": f"patient-{cls}-{(n + 1) // 2}" if groups else ""})
            expected[f"images/{stem}"] = "normal" if cls == "normal" else "lesion"
    from ultraseg.io import write_csv

    write_csv(dest / "labels.csv", rows, ["image", "mask", "group"])
    return expected
