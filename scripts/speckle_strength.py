"""How strong the shift suite's speckle is next to training's, where the network sees them: in its normalised input.

The suite adds speckle to the scan as delivered, before CLAHE and the resize to network size; training adds it to
the stored network-size image, after both. CLAHE stretches local contrast, noise included, so equal coefficients of
variation are not equal perturbations. For lesion images of the BUSI mirror this script preprocesses each image
clean and under each speckle severity of the suite, and applies training's speckle (params.yaml's train.augment at
its coarsest grain) to the clean network input, then writes to results/speckle_strength.json the mean over images
of two sizes of the change, in units of the normalised input:

  fine    the standard deviation of the difference: grain-sized noise
  coarse  the mean absolute difference after a Gaussian blur of sigma 4 px: the change in local brightness

    python scripts/speckle_strength.py                  # 48 lesion images
    python scripts/speckle_strength.py --images 200 --params other.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from ultraseg import params as params_mod, shifts
from ultraseg.data.augment import speckle
from ultraseg.io import write_json
from ultraseg.runtime.preprocess import normalize, preprocess

REPO = Path(__file__).resolve().parents[1]
COARSE_SIGMA = 4.0


def change(clean: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(fine, coarse) size of ``other - clean``, both float32 network inputs."""
    diff = other - clean
    return float(diff.std()), float(np.abs(cv2.GaussianBlur(diff, (0, 0), COARSE_SIGMA)).mean())


def lesion_images(root: Path, count: int) -> list[Path]:
    files = sorted(p for cls in ("benign", "malignant") if (root / cls).is_dir() for p in (root / cls).iterdir()
                   if "_mask" not in p.stem and p.suffix.lower() in (".png", ".webp", ".jpg", ".jpeg"))
    if not files:
        sys.exit(f"error: {root}: no benign/ or malignant/ images")
    return files[:: max(1, len(files) // count)][:count]


def measure(files: list[Path], params: params_mod.Params) -> dict:
    pre, aug = params.preprocess, params.train.augment
    shift = shifts.by_name("speckle")
    sizes: dict[str, list[tuple[float, float]]] = {name: [] for name in (*shifts.SEVERITIES, "augment")}
    for index, path in enumerate(files):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            sys.exit(f"error: {path}: not a readable image")
        clean = normalize(preprocess(image, pre), pre.normalize)
        for severity in shifts.SEVERITIES:
            shifted, _ = shifts.apply(shift, severity, image, np.zeros(image.shape, bool), 0, index)
            sizes[severity].append(change(clean, normalize(preprocess(shifted, pre), pre.normalize)))
        noisy = speckle(clean, aug.speckle, np.random.default_rng(index), max(1.0, aug.speckle_grain))
        sizes["augment"].append(change(clean, noisy))  # training feeds the augmented input as it is
    mean = {name: np.mean(values, axis=0).round(4).tolist() for name, values in sizes.items()}
    return {"images": len(files), "units": "normalised network input (preprocess.normalize)",
            "shift": {severity: {"grain_sigma_px": level, "fine": mean[severity][0], "coarse": mean[severity][1]}
                      for severity, level in zip(shifts.SEVERITIES, shift.levels)},
            "augment": {"speckle": aug.speckle, "grain_sigma_px": max(1.0, aug.speckle_grain),
                        "fine": mean["augment"][0], "coarse": mean["augment"][1]}}


def main(argv: list[str] | None = None) -> None:
    summary, _, details = __doc__.strip().partition("\n")
    ap = argparse.ArgumentParser(description=summary, epilog=details,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48, help="lesion images, evenly spaced (default: %(default)s)")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "busi", help="BUSI folder")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "speckle_strength.json")
    args = ap.parse_args(argv)
    result = measure(lesion_images(args.data, args.images), params_mod.load(args.params))
    write_json(args.out, result)
    print(f"speckle_strength: -> {args.out}")


if __name__ == "__main__":
    main()
