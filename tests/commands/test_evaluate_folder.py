"""ultraseg evaluate-folder and the external stage: the same scores as the evaluate stage, bad files, outputs."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.runtime.test_sources import huge_png
from ultraseg.commands import evaluate_folder
from ultraseg.io import split_ids
from ultraseg.pipeline import evaluate
from ultraseg.runtime.model_files import DEPLOY_FILE
from tests.conftest import shipped_params


def test_folder_of_the_test_split_scores_exactly_as_evaluate(zoo, tmp_path):
    """The deployable file on a folder holding the test split's images gives evaluate's numbers for it."""
    root = tmp_path / "site"
    for image_id in split_ids(zoo.split, "test"):
        for kind in ("images", "masks"):
            (root / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(zoo.raw / kind / f"{image_id}.png", root / kind / f"{image_id}.png")
    summary = evaluate_folder.evaluate(zoo.models / DEPLOY_FILE, root, tmp_path / "out", n_boot=50, seed=3)
    params = shipped_params({"preprocess": {"size": zoo.size}, "evaluate": {"bootstrap": 50, "seed": 3}})
    val = evaluate.Split(zoo.data, zoo.raw, zoo.split, "val", "zscore")
    test = evaluate.Split(zoo.data, zoo.raw, zoo.split, "test", "zscore")
    expected, _, _, _ = evaluate.score_deployed(zoo.models / DEPLOY_FILE, val, test, params.evaluate)
    for key in ("n_lesion", "n_normal", "dice", "dice_ci95", "iou", "precision", "recall", "hd95", "hd95_nan",
                "normal_clean", "failures"):
        assert json.dumps(summary[key]) == json.dumps(expected[key]), key  # equal, NaN included
    image = expected["image_level"]  # evaluate also says which score and where its point came from
    assert json.dumps(summary["image_level"]) == json.dumps({key: image[key] for key in summary["image_level"]})
    assert summary["image_level"]["n_normal"] == 1  # the runtime's image-level answer, scored on the normal scan too
    rows = (tmp_path / "out" / "cases.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and rows[0].startswith("id,file,class,group,dice")
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["dice"] == pytest.approx(summary["dice"]) and saved["skipped"] == []
    assert (tmp_path / "out" / "cases.png").read_bytes()[:4] == b"\x89PNG"


def test_hd95_in_mm_where_the_csv_gives_the_spacing(zoo, tmp_path):
    image_id = next(i for i in split_ids(zoo.split, "test") if not i.startswith("normal"))
    for name in ("img.png", "ref.png"):
        kind = "images" if name == "img.png" else "masks"
        shutil.copy(zoo.raw / kind / f"{image_id}.png", tmp_path / name)
    shutil.copy(tmp_path / "img.png", tmp_path / "img2.png")
    (tmp_path / "labels.csv").write_text("image,mask,pixel_spacing_mm\nimg.png,ref.png,0.2\nimg2.png,ref.png,\n")
    summary = evaluate_folder.evaluate(zoo.models / DEPLOY_FILE, tmp_path / "labels.csv", tmp_path / "out", n_boot=10)
    rows = {r["id"]: r for r in _csv(tmp_path / "out" / "cases.csv")}
    if not math.isnan(float(rows["img"]["hd95"])):
        assert float(rows["img"]["hd95_mm"]) == pytest.approx(0.2 * float(rows["img"]["hd95"]))
    assert rows["img2"]["hd95_mm"] == "nan" and rows["img2"]["pixel_spacing_mm"] == ""
    assert summary["n_lesion"] == 2
    # lesion images only: no specificity or AUC to report, and the command says what is needed
    assert summary["image_level"] is None and float(rows["img"]["score"]) == float(rows["img2"]["score"])
    assert evaluate_folder.image_line(None) == evaluate_folder.NO_IMAGE_LEVEL


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ultraseg.commands.console", "evaluate-folder", *args],
                          capture_output=True, text=True)


def test_cli_reports_each_bad_file_and_writes_nothing(zoo, tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    for kind in ("images", "masks"):
        (root / kind).mkdir()
    for image_id in split_ids(zoo.split, "test")[:3]:
        for kind in ("images", "masks"):
            shutil.copy(zoo.raw / kind / f"{image_id}.png", root / kind / f"{image_id}.png")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cv2.imwrite(str(root / "masks" / "broken.png"), np.zeros((zoo.size, zoo.size), np.uint8))
    cv2.imwrite(str(root / "masks" / "grey.png"), np.arange(zoo.size * zoo.size, dtype=np.uint8).reshape(zoo.size, -1))
    cv2.imwrite(str(root / "images" / "grey.png"), np.zeros((zoo.size, zoo.size), np.uint8))
    (root / "images" / "huge.png").write_bytes(huge_png(20000, 20000))
    cv2.imwrite(str(root / "masks" / "huge.png"), np.zeros((zoo.size, zoo.size), np.uint8))
    model = str(zoo.models / DEPLOY_FILE)
    out = run_cli(str(root), "--model", model, "--out", str(tmp_path / "out"))
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 1, out.stderr
    assert any("broken.png: truncated PNG" in e for e in errors) and any("grey.png: non-binary mask" in e for e in errors)
    assert f"error: {root / 'images' / 'huge.png'}: declares 20000 x 20000 (400.0 megapixels) per frame, over the " \
           "budget of 50 megapixels (--max-pixels)" in errors
    assert not (tmp_path / "out").exists()
    out = run_cli(str(root), "--model", model, "--out", str(tmp_path / "out"), "--skip-bad", "--bootstrap", "20")
    assert out.returncode == 1 and "evaluate-folder: " in out.stdout, out.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_images"] == 3 and len(summary["skipped"]) == 3
    assert (evaluate_folder.NO_IMAGE_LEVEL in out.stdout) == (summary["n_normal"] == 0)


def test_cli_without_images_or_model_is_one_line(zoo, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    out = run_cli(str(tmp_path), "--model", str(zoo.models / DEPLOY_FILE), "--out", str(tmp_path / "out"))
    assert out.returncode == 2 and out.stderr.strip().endswith("no labelled image found (folders layout)")
    out = run_cli(str(tmp_path), "--model", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "out"))
    assert out.returncode == 2 and "none.onnx: model file not found" in out.stderr
    assert "--skip-bad" in run_cli("--help").stdout


def test_external_stage_scores_each_listed_folder(zoo, repo_root, tmp_path, params_file):
    site = tmp_path / "siteA"
    for kind in ("images", "masks"):
        (site / kind).mkdir(parents=True)
        for image_id in split_ids(zoo.split, "test"):
            shutil.copy(zoo.raw / kind / f"{image_id}.png", site / kind / f"{image_id}.png")

    def stage(folders: list[str]) -> dict:
        params = params_file(tmp_path / "params.yaml", {"evaluate": {"external": folders, "bootstrap": 20}})
        out = subprocess.run([sys.executable, str(repo_root / "stages" / "external.py"), "--params", str(params),
                              "--models", str(zoo.models), "--out", str(tmp_path / "results"),
                              "--metrics", str(tmp_path / "external.json")], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return json.loads((tmp_path / "external.json").read_text())

    scored = stage([str(site), str(site)])
    assert list(scored["datasets"]) == ["siteA-1", "siteA-2"]
    assert scored["datasets"]["siteA-1"]["dice"] == scored["datasets"]["siteA-2"]["dice"]
    assert (tmp_path / "results" / "siteA-1" / "cases.csv").exists()
    assert len((tmp_path / "results" / "datasets.csv").read_text().splitlines()) == 3
    assert stage([])["datasets"] == {}


def test_image_line_quotes_the_image_level_figures():
    from ultraseg import presence

    image = presence.image_level([0.1, 0.4, 0.35, 0.8], [False, False, True, True], 0.4, n_boot=20)
    line = evaluate_folder.image_line(image)
    assert "ROC AUC 0.7500 [" in line and "operating point 0.4000 sensitivity 0.5000" in line
    assert "specificity 0.5000" in line
