"""ultraseg predict: one batch over every input kind built from a real BUSI scan, checked row by row and file by
file against the runtime itself, plus the exit codes and the console command."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.runtime.test_sources import (colour_version, huge_png, truncated_png, us_region, write_dicom, write_image,
                                        write_video)
from tests.runtime.test_presence import LOGIT, deployable, network  # noqa: F401 (a fixture)
from ultraseg.commands import predict
from ultraseg.data.busi import read_image
from ultraseg.io import read_csv
from ultraseg.runtime import Segmenter
from ultraseg.runtime.sources import read_frames

SPACING = {"dicom/mono1.dcm": (0.2, 0.1), "dicom/cine.dcm": (0.3, 0.4)}
"""(row, column) mm per pixel the DICOM inputs declare."""
FRAMES = {"grey.png": [0], "grey16.png": [0], "rgb.png": [0], "colour.png": [0], "grey.dcm": [0],
          "same/grey.png": [0], "dicom/mono1.dcm": [0], "dicom/cine.dcm": [0, 1, 2], "clip.avi": [0, 1]}
BAD = ("bad/zero.png", "bad/text.png", "bad/half.png")


@dataclass
class Batch:
    inputs: Path
    out: Path
    code: int
    stderr: str
    rows: list[dict]
    grey: np.ndarray
    model: Path
    threshold: float
    expected: np.ndarray
    """The runtime's own mask for the 8-bit grey scan at that threshold."""


def invoke(argv: list[str]) -> tuple[int, str]:
    """Run ``ultraseg predict`` in this process; its exit code and what it wrote to stderr."""
    ap = argparse.ArgumentParser(prog="ultraseg")
    predict.add_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["predict", *argv])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = args.run(args)
    return code, stderr.getvalue()


def build_inputs(root: Path, grey: np.ndarray) -> None:
    write_image(root / "grey.png", grey)
    write_image(root / "grey16.png", grey.astype(np.uint16) * 257)
    write_image(root / "rgb.png", np.dstack([grey] * 3))
    write_image(root / "colour.png", colour_version(grey))
    write_image(root / "same" / "grey.png", grey)
    write_dicom(root / "grey.dcm", grey)  # same stem as grey.png: the names must still differ
    write_dicom(root / "dicom" / "mono1.dcm", 255 - grey, "MONOCHROME1",
                SequenceOfUltrasoundRegions=us_region(0.01, 0.02))
    cine = np.stack([grey, grey[::-1], np.roll(grey, 20, axis=1)])
    write_dicom(root / "dicom" / "cine.dcm", cine, frames=3, PixelSpacing=[0.3, 0.4])
    even = grey[: grey.shape[0] // 2 * 2, : grey.shape[1] // 2 * 2]
    write_video(root / "clip.avi", [even, even[::-1]])
    (root / "bad").mkdir()
    (root / "bad" / "zero.png").write_bytes(b"")
    (root / "bad" / "text.png").write_text("not a picture\n")
    truncated_png(root / "bad" / "half.png", grey)


@pytest.fixture(scope="module")
def model(zoo) -> Path:
    return zoo.models / "pruned.int8.onnx"


@pytest.fixture(scope="module")
def batch(tmp_path_factory, busi_mirror, model) -> Batch:
    grey = read_image(busi_mirror / "benign" / "benign (1).webp")
    root = tmp_path_factory.mktemp("predict")
    build_inputs(root / "inputs", grey)
    segmenter = Segmenter(model)
    # the test model is untrained: a threshold inside its probability range gives a mask with something in it
    threshold = round(float(np.quantile(segmenter.probability(grey)[0], 0.6)), 6)
    expected = segmenter.segment(grey, threshold=threshold).mask
    assert 0 < expected.sum() < expected.size
    code, stderr = invoke([str(root / "inputs"), "--out", str(root / "out"), "--model", str(model),
                           "--threshold", str(threshold)])
    rows = read_csv(root / "out" / "results.csv")
    return Batch(root / "inputs", root / "out", code, stderr, rows, grey, model, threshold, expected)


def relative(batch: Batch, row: dict) -> str:
    return Path(row["file"]).relative_to(batch.inputs).as_posix()


def mask_of(batch: Batch, name: str) -> np.ndarray:
    image = cv2.imread(str(batch.out / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    assert image is not None, name
    return image


# ---------------------------------------------------------------------------------------------------- the batch


def test_one_row_per_frame_and_bad_files_reported_once(batch):
    frames: dict[str, list[int]] = {}
    for row in batch.rows:
        frames.setdefault(relative(batch, row), []).append(int(row["frame"]))
    assert frames == FRAMES
    errors = [line for line in batch.stderr.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert len(errors) == len(BAD)
    for name in BAD:
        assert sum(f"error: {batch.inputs / name}: " in line for line in errors) == 1
    assert batch.code == 1


def test_area_mm2_only_where_spacing_is_known(batch):
    for row in batch.rows:
        spacing = SPACING.get(relative(batch, row))
        if spacing is None:
            assert row["area_mm2"] == ""
        else:
            assert float(row["area_mm2"]) == pytest.approx(int(row["area_px"]) * spacing[0] * spacing[1], abs=1e-6)


def test_masks_at_input_size_agree_with_rows(batch):
    names = predict.output_stems([batch.inputs / name for name in FRAMES])
    for row in batch.rows:
        source = batch.inputs / relative(batch, row)
        frame = list(read_frames(source))[int(row["frame"])]
        mask = mask_of(batch, predict.frame_name(names[source], frame))
        assert mask.shape == frame.image.shape[:2]
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert int(row["area_px"]) == int((mask > 0).sum())
        assert row["lesion_present"] == str(bool(mask.any()))
        if mask.any():
            assert tuple(int(row[k]) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")) == cv2.boundingRect(mask)
        total = sum(float(row[k]) for k in ("preprocess_ms", "model_ms", "postprocess_ms"))
        assert float(row["total_ms"]) == pytest.approx(total, abs=0.01)


def test_grey_16bit_rgb_and_monochrome1_give_the_runtime_mask(batch):
    for name in ("grey_png", "grey16", "rgb", "grey_dcm", "same/grey", "dicom/mono1", "dicom/cine_f0000"):
        np.testing.assert_array_equal(mask_of(batch, name) > 0, batch.expected, err_msg=name)
    # the colour copy is a different picture: its mask must come from its own pixels, not the grey file's
    colour = Segmenter(batch.model).segment(colour_version(batch.grey), threshold=batch.threshold)
    np.testing.assert_array_equal(mask_of(batch, "colour") > 0, colour.mask)


@pytest.mark.parametrize("name", ["grey_png", "colour"])
def test_overlay_fills_the_lesion_and_keeps_the_rest(batch, name):
    image = np.dstack([batch.grey] * 3) if name == "grey_png" else colour_version(batch.grey)
    mask = mask_of(batch, name) > 0
    overlay = cv2.cvtColor(cv2.imread(str(batch.out / "overlays" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    assert overlay.shape == image.shape
    kernel = np.ones((7, 7), np.uint8)  # wider than the outline, so both regions are free of it
    outside = cv2.dilate(mask.astype(np.uint8), kernel) == 0
    # the image's edge counts as outside: lesions that touch it are outlined there
    inside = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
    assert outside.any() and inside.any()
    np.testing.assert_array_equal(overlay[outside], image[outside])
    fill = image[inside] * (1 - predict.FILL_ALPHA) + predict.FILL_ALPHA * np.array(predict.FILL_RGB)
    assert np.abs(overlay[inside].astype(float) - fill).max() <= 1


def test_every_frame_gets_its_own_files(batch):
    masks = sorted(p.relative_to(batch.out / "masks").as_posix() for p in (batch.out / "masks").rglob("*.png"))
    overlays = sorted(p.relative_to(batch.out / "overlays").as_posix()
                      for p in (batch.out / "overlays").rglob("*.png"))
    assert masks == overlays
    assert len(masks) == len(batch.rows)
    assert {"grey_png.png", "grey_dcm.png", "same/grey.png", "dicom/cine_f0002.png", "clip_f0001.png"} <= set(masks)
    assert not list(batch.out.rglob("*.tmp"))  # atomic writes leave no temporaries behind


# ------------------------------------------------------------------------------------------------ options, exit codes


def test_clean_batch_exits_0_and_writes_jsonl(tmp_path, busi_mirror, model):
    grey = read_image(busi_mirror / "benign" / "benign (1).webp")
    path = write_image(tmp_path / "scan.png", grey)
    code, stderr = invoke([str(path), "--out", str(tmp_path / "out"), "--model", str(model), "--format", "jsonl",
                           "--no-overlay", "--threshold", "0.999"])
    assert code == 0 and "error" not in stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["file"], r["frame"], r["area_mm2"], r["lesion_present"]) for r in rows] == [(str(path), 0, None,
                                                                                           rows[0]["area_px"] > 0)]
    assert not (tmp_path / "out" / "overlays").exists()


def test_missing_input_is_reported_and_batch_goes_on(tmp_path, busi_mirror, model):
    good = write_image(tmp_path / "scan.png", read_image(busi_mirror / "benign" / "benign (1).webp"))
    code, stderr = invoke([str(tmp_path / "nope.png"), str(good), "--out", str(tmp_path / "out"),
                           "--model", str(model)])
    assert code == 1
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'nope.png'}: no such file or folder"]
    assert len(read_csv(tmp_path / "out" / "results.csv")) == 1


def test_a_file_over_the_pixel_budget_is_reported_from_its_header_and_the_batch_goes_on(tmp_path, busi_mirror, model):
    grey = read_image(busi_mirror / "benign" / "benign (1).webp")
    good = write_image(tmp_path / "scans" / "a.png", grey)
    (tmp_path / "scans" / "b_huge.png").write_bytes(huge_png(20000, 20000))
    write_image(tmp_path / "scans" / "c.png", grey)
    code, stderr = invoke([str(tmp_path / "scans"), "--out", str(tmp_path / "out"), "--model", str(model)])
    assert code == 1
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'scans' / 'b_huge.png'}: declares 20000 x 20000 (400.0 megapixels) per frame, over "
        "the budget of 50 megapixels (--max-pixels)"]
    assert [row["file"] for row in read_csv(tmp_path / "out" / "results.csv")] == [
        str(good), str(tmp_path / "scans" / "c.png")]
    code, stderr = invoke([str(good), "--out", str(tmp_path / "out2"), "--model", str(model),
                           "--max-pixels", str(grey.size - 1)])
    assert code == 1 and f"{grey.shape[1]} x {grey.shape[0]}" in stderr


def test_earlier_outputs_inside_an_input_folder_are_not_inputs(tmp_path, busi_mirror, model):
    write_image(tmp_path / "scans" / "scan.png", read_image(busi_mirror / "benign" / "benign (1).webp"))
    argv = [str(tmp_path / "scans"), "--out", str(tmp_path / "scans" / "results"), "--model", str(model)]
    assert invoke(argv)[0] == 0 and invoke(argv)[0] == 0
    assert [row["file"] for row in read_csv(tmp_path / "scans" / "results" / "results.csv")] == [
        str(tmp_path / "scans" / "scan.png")]


def model_without_metadata(model: Path, path: Path) -> Path:
    import onnx

    proto = onnx.load(str(model))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("kind", ["not onnx", "no metadata", "missing"])
def test_unusable_model_exits_2_with_one_line(tmp_path, busi_mirror, model, kind):
    good = write_image(tmp_path / "scan.png", read_image(busi_mirror / "benign" / "benign (1).webp"))
    bad = tmp_path / "model.onnx"
    if kind == "not onnx":
        bad.write_text("not a model\n")
    elif kind == "no metadata":
        model_without_metadata(model, bad)
    code, stderr = invoke([str(good), "--out", str(tmp_path / "out"), "--model", str(bad)])
    assert code == 2
    assert stderr.startswith(f"error: {bad}: ") and stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_output_names_never_collide():
    files = [Path("/s/a.png"), Path("/s/a.dcm"), Path("/s/sub/a.png"), Path("/s/b.png")]
    assert list(predict.output_stems(files).values()) == ["a_png", "a_dcm", "sub/a", "b"]


# ---------------------------------------------------------------------------------------------------- console


def test_console_command(tmp_path, busi_mirror, model):
    path = write_image(tmp_path / "scan.png", read_image(busi_mirror / "benign" / "benign (1).webp"))
    command = [sys.executable, "-m", "ultraseg.commands.console", "predict"]
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--threshold" in shown.stdout and "results.csv" in shown.stdout
    done = subprocess.run([*command, str(path), "--out", str(tmp_path / "out"), "--model", str(model)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_csv(tmp_path / "out" / "results.csv")[0]["file"] == str(path)
    assert cv2.imread(str(tmp_path / "out" / "masks" / "scan.png"), cv2.IMREAD_UNCHANGED).shape == path_shape(path)


def path_shape(path: Path) -> tuple[int, ...]:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape


def test_rows_say_whether_each_frame_is_one_the_model_knows(batch, zoo, tmp_path):
    from tests.conftest import shipped_params, train_val_split
    from ultraseg.pipeline import deploy

    assert {(r["in_distribution"], r["ood_reason"]) for r in batch.rows} == {("True", "not checked")}
    params = shipped_params({"preprocess": {"size": zoo.size},
                                   "deploy": {"threshold_step": 0.25, "gates": [0.0], "min_areas": [0.0]}})
    checked = tmp_path / "checked.onnx"
    deploy.run(params, zoo.models / "pruned.int8.onnx", zoo.raw, train_val_split(zoo, tmp_path / "split.csv"), checked)
    write_image(tmp_path / "in" / "blank.png", np.full((60, 80), 40, np.uint8))
    write_image(tmp_path / "in" / "scan.png", batch.grey)
    code, _ = invoke([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--model", str(checked),
                      "--threshold", "0.001"])
    rows = {Path(r["file"]).name: r for r in read_csv(tmp_path / "out" / "results.csv")}
    assert code == 0
    assert (rows["blank.png"]["in_distribution"], rows["blank.png"]["ood_reason"]) == ("False", "constant frame")
    assert rows["blank.png"]["lesion_present"] == "False" and rows["blank.png"]["area_px"] == "0"
    scan = Segmenter(checked).segment(batch.grey, threshold=0.001)
    assert (rows["scan.png"]["in_distribution"], rows["scan.png"]["ood_reason"]) == (str(scan.in_distribution),
                                                                                      scan.ood_reason)
    assert rows["scan.png"]["lesion_present"] == str(scan.in_distribution)  # lesion nearly everywhere when answered


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_rows_carry_the_calibrated_presence_score_and_answer(tmp_path, busi_mirror, network, temperature):
    """A file with a presence output: the row's score is the calibrated probability, its answer the runtime's
    (sigmoid(2 / T) is 0.881 at T=1 and 0.622 at T=4, against an operating point of 0.75)."""
    segmenter = deployable(network, tmp_path, temperature=temperature, threshold=0.75)
    grey = read_image(busi_mirror / "benign" / "benign (1).webp")
    path = write_image(tmp_path / "scan.png", grey)
    code, _ = invoke([str(path), "--out", str(tmp_path / "out"), "--model", str(segmenter.path), "--format", "jsonl",
                      "--no-overlay"])
    row = json.loads((tmp_path / "out" / "results.jsonl").read_text())
    expected = segmenter.segment(grey)
    assert code == 0 and row["score"] == pytest.approx(expected.score, abs=1e-6)
    assert row["score"] == pytest.approx(1 / (1 + np.exp(-LOGIT / temperature)), abs=1e-5)
    assert row["lesion_present"] is (temperature == 1.0) is expected.lesion_present
    if not row["lesion_present"]:
        assert row["area_px"] == 0
