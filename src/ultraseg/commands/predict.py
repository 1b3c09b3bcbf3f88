"""ultraseg predict: segment image files, folders, DICOM and video files with the deployable model.

For every image, and every frame of a cine DICOM or a video, it writes below --out:

    masks/<name>.png       the lesion mask at the input's own resolution, 0 (background) or 255 (lesion)
    overlays/<name>.png    the image in colour, the lesion filled translucent and its outline drawn
    results.csv            one row per image or frame (or results.jsonl with --format jsonl)

<name> is the input's path relative to the folder all inputs share, without its extension (kept, as
_png, _dcm ..., only where two inputs would otherwise get the same name), plus _f0000, _f0001 ...
for the frames of a multi-frame file. A file that cannot be read is reported on one line and the batch goes on;
the exit status is then 1. A model that cannot be used stops the command with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ultraseg.commands import model_choice
from ultraseg.errors import DataError
from ultraseg.io import atomic_path, write_csv
from ultraseg.runtime.segmenter import Segmentation, Segmenter
from ultraseg.runtime.sources import MAX_PIXELS, Frame, expand, read_frames, to_grey, to_grey_channels

COLUMNS = ("file", "frame", "in_distribution", "ood_reason", "lesion_present", "score", "area_px", "area_mm2",
           "bbox_x", "bbox_y", "bbox_w", "bbox_h", "preprocess_ms", "model_ms", "postprocess_ms", "total_ms")
FILL_RGB = (255, 60, 0)
"""Lesion fill colour of the overlay: an orange-red that stands out on grey ultrasound."""
OUTLINE_RGB = (255, 230, 0)
FILL_ALPHA = 0.35
EXAMPLES = """examples:
  ultraseg predict scan.png --out results/
  ultraseg predict study/ cine.dcm clip.mp4 --out results/ --format jsonl
  ultraseg predict scans/ --out results/ --threshold 0.4 --no-overlay

inputs: images (.png .jpg .bmp .tif .webp, 8- or 16-bit, grey or colour), DICOM files (.dcm or any file with
the DICM preamble; cine loops frame by frame; the lesion area in mm2 when the file gives the pixel spacing),
videos (.mp4 .avi .mov .mkv .y4m ...) frame by frame, and folders of them (searched recursively)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``predict`` on the ``ultraseg`` command's subparsers."""
    ap = subparsers.add_parser("predict", help="segment images, folders, DICOM and video files",
                               description=__doc__, epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="image, DICOM or video file, or a folder of them")
    ap.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for masks, overlays and results")
    model_choice.add_arguments(ap)
    ap.add_argument("--threshold", type=_probability, default=None, metavar="P",
                    help="pixel probability threshold in (0, 1), instead of the one stored in the model")
    ap.add_argument("--threads", type=positive_int, default=1, metavar="N",
                    help="CPU threads for the model (default: 1)")
    ap.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                    help="results.csv or results.jsonl (default: csv)")
    ap.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS, metavar="N",
                    help="largest frame accepted, in pixels (default: %(default)s); a file whose header declares "
                         "larger frames is reported and skipped before it is decoded")
    ap.add_argument("--no-overlay", dest="overlay", action="store_false", help="write masks only, no overlays")
    ap.set_defaults(run=run)
    return ap


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (``serve`` uses it too)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Segment every input; 0 when all went well, 1 when some file failed, 2 when nothing could start."""
    try:
        segmenter = Segmenter(model_choice.model_path(args), threads=args.threads)
    except DataError as err:
        return _fail(str(err), 2)
    if args.out.exists() and not args.out.is_dir():
        return _fail(f"{args.out}: --out must be a folder, this is a file", 2)
    files, failures = collect(args.inputs, args.out)
    names = output_stems(files)
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(files), desc="predict", unit="file", file=sys.stderr) as bar:
        for path in files:
            try:
                for frame in read_frames(path, args.max_pixels):
                    rows.append(predict_frame(segmenter, frame, args, names[path]))
                    bar.set_postfix(frames=len(rows), refresh=False)
            except (DataError, cv2.error) as err:
                failures += _report(err, path)
            bar.update()
    write_results(args.out / f"results.{args.format}", rows, args.format)
    return 1 if failures else 0


def collect(inputs: Sequence[str], out: Path) -> tuple[list[Path], int]:
    """The files to segment, less any below ``out`` (an earlier run's masks in a folder given as input), and
    the number of inputs that could not be used (each reported)."""
    files: list[Path] = []
    failures = 0
    for item in inputs:
        try:
            files.extend(expand([item]))
        except DataError as err:
            failures += _report(err)
    out = out.resolve()
    return [path for path in files if not path.resolve().is_relative_to(out)], failures


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _report(err: Exception, path: Path | None = None) -> int:
    """Print one ``error: <file>: <reason>`` line (above the progress bar) and count one failure."""
    message = " ".join(str(err).split())
    if path is not None and not message.startswith(str(path)):
        message = f"{path}: {message}"
    tqdm.write(f"error: {message}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------------------------------- names


def output_stems(files: Sequence[Path]) -> dict[Path, str]:
    """A distinct output name for every file: its path relative to the folder all files share, without the
    extension, or with it (``a_png``) where two files would otherwise get the same name."""
    if not files:
        return {}
    resolved = [path.resolve() for path in files]
    try:
        base = Path(os.path.commonpath([path.parent for path in resolved]))
        relative = [path.relative_to(base) for path in resolved]
    except ValueError:  # files on different drives share no folder
        relative = [Path(*path.parts[1:]) for path in resolved]
    stems = [rel.with_suffix("").as_posix() for rel in relative]
    taken = {stem: stems.count(stem) for stem in stems}
    return {path: stem if taken[stem] == 1 else rel.as_posix().replace(".", "_")
            for path, stem, rel in zip(files, stems, relative)}


def frame_name(stem: str, frame: Frame) -> str:
    return f"{stem}_f{frame.index:04d}" if frame.multiframe else stem


# ---------------------------------------------------------------------------------------------------- one frame


def predict_frame(segmenter: Segmenter, frame: Frame, args: argparse.Namespace, stem: str) -> dict[str, Any]:
    """Segment one frame, write its mask (and overlay) and return its results row."""
    try:
        result = segmenter.segment(frame.image, pixel_spacing=frame.pixel_spacing, threshold=args.threshold)
    except DataError as err:  # the runtime's messages name the array, not the file
        raise DataError(f"{frame.source}: frame {frame.index}: {err}") from None
    name = frame_name(stem, frame)
    write_png(args.out / "masks" / f"{name}.png", result.mask.astype(np.uint8) * 255)
    if args.overlay:
        write_png(args.out / "overlays" / f"{name}.png", overlay(frame.image, result.mask))
    return result_row(frame, result)


def result_row(frame: Frame, result: Segmentation) -> dict[str, Any]:
    x, y, w, h = result.bbox if result.bbox is not None else (None,) * 4
    timings = {key: round(result.timings.get(key, 0.0), 3) for key in ("preprocess_ms", "model_ms", "postprocess_ms")}
    return {
        "file": str(frame.source), "frame": frame.index, "in_distribution": result.in_distribution,
        "ood_reason": result.ood_reason, "lesion_present": result.lesion_present,
        "score": round(result.score, 6), "area_px": result.area_px,
        "area_mm2": None if result.area_mm2 is None else round(result.area_mm2, 6),
        "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
        **timings, "total_ms": round(sum(result.timings.values()), 3),
    }


def display_rgb(image: np.ndarray) -> np.ndarray:
    """Any frame the runtime accepts as 8-bit RGB for display (grey repeated, alpha dropped, 16-bit /257)."""
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return to_grey_channels(image[..., :3]).astype(np.uint8)
    return np.repeat(to_grey(image)[..., None], 3, axis=2)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image in colour (RGB) with the lesion filled translucent and every lesion's outline drawn."""
    rgb = display_rgb(image)
    blended = rgb.astype(np.float32) * (1 - FILL_ALPHA) + np.float32(FILL_ALPHA) * np.array(FILL_RGB, np.float32)
    out = np.where(mask[..., None], np.rint(blended).astype(np.uint8), rgb)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(max(mask.shape) / 300))
    return cv2.drawContours(np.ascontiguousarray(out), contours, -1, OUTLINE_RGB, thickness)


# ---------------------------------------------------------------------------------------------------- writing


def write_png(path: Path, image: np.ndarray) -> None:
    """A grey or RGB array as a PNG file, atomically."""
    array = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with atomic_path(path) as tmp:
        encoded.tofile(str(tmp))


def write_results(path: Path, rows: list[dict[str, Any]], fmt: str) -> None:
    """All rows as CSV (empty cells where a value is unknown) or JSON Lines (null), atomically."""
    if fmt == "csv":
        write_csv(path, rows, COLUMNS)
        return
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
