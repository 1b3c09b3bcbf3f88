"""The evaluate stage's work on a tiny workspace: a perfect predictor scores 1, thresholds come from val only,
every variant is scored through its own runtime, and the outputs are written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ultraseg.params import Params
from ultraseg.pipeline import evaluate
from ultraseg.runtime.model_files import INT8_VARIANT, Outputs
from ultraseg.variants import VARIANTS, by_name
from tests.conftest import shipped, shipped_params


def params_for(zoo, **evaluate_kwargs) -> Params:
    return shipped_params({"preprocess": {"size": zoo.size}, "evaluate": {"bootstrap": 50, **evaluate_kwargs}})


def oracle(zoo, flip_ids=()):
    """A predictor that knows every mask: logits +-20 by looking the (normalised) image up; ``flip_ids`` get the
    inverted mask, to make a known failure."""
    data = evaluate.Split(zoo.data, zoo.raw, zoo.split, "test", "zscore")
    val = evaluate.Split(zoo.data, zoo.raw, zoo.split, "val", "zscore")
    inputs = np.concatenate([data.inputs, val.inputs])
    ids = data.ids + val.ids

    def predict(images: np.ndarray) -> np.ndarray:
        out = []
        for image in images[:, 0]:
            k = int(np.argmin(((inputs - image) ** 2).sum(axis=(1, 2))))
            mask = zoo.masks[ids[k]] ^ (ids[k] in flip_ids)
            out.append(np.where(mask, 20.0, -20.0)[None])
        return Outputs(np.stack(out).astype(np.float32), None)

    return predict


def test_a_perfect_predictor_scores_one(zoo, monkeypatch):
    monkeypatch.setattr(evaluate, "predictor", lambda variant, models_dir: oracle(zoo))
    metrics, rows, curves, _ = evaluate.run(params_for(zoo), zoo.models, zoo.data, zoo.raw, zoo.split,
                                            [by_name("teacher")])
    m = metrics["variants"]["teacher"]
    assert m["dice"] == m["iou"] == m["precision"] == m["recall"] == m["dice_pooled"] == 1.0
    assert m["hd95"] == 0.0
    assert m["dice_ci95"] == [1.0, 1.0]
    assert m["normal_clean"] == 1.0 and m["both_empty"] == 1  # the one normal test image: NaN Dice, not 1
    assert (m["n_lesion"], m["n_normal"]) == (5, 1)
    assert m["by_class"]["benign"]["n"] == 3 and m["by_class"]["malignant"]["dice"] == 1.0
    assert [r["id"] for r in rows] == evaluate.Split(zoo.data, zoo.raw, zoo.split, "test", "zscore").ids
    assert metrics["n_images"] == 6


def test_a_known_failure_is_counted(zoo, monkeypatch):
    monkeypatch.setattr(evaluate, "predictor", lambda variant, models_dir: oracle(zoo, {"benign (2)"}))
    metrics, rows, _, _ = evaluate.run(params_for(zoo), zoo.models, zoo.data, zoo.raw, zoo.split,
                                       [by_name("teacher")])
    failed = next(r for r in rows if r["id"] == "benign (2)")
    assert failed["dice"] == 0.0
    assert metrics["variants"]["teacher"]["dice"] == pytest.approx(4 / 5, abs=1e-4)
    assert metrics["variants"]["teacher"]["by_class"]["benign"]["dice"] == pytest.approx(2 / 3, abs=1e-4)


def test_threshold_is_chosen_on_val_never_on_test(zoo, monkeypatch):
    """Val lesion pixels get probability 0.7, test ones 0.3: every threshold from 0.05 to 0.65 is perfect on val, the
    tie goes to 0.5, which misses every test lesion; a threshold chosen on test would have caught them."""
    val_ids = set(evaluate.Split(zoo.data, zoo.raw, zoo.split, "val", "zscore").ids)
    base = oracle(zoo)

    def shifted(images):
        logits = base(images).logits
        out = []
        for image, logit in zip(images, logits):
            is_val = any(np.allclose(image[0], v) for v in val_inputs)
            p_lesion = 0.7 if is_val else 0.3
            out.append(np.where(logit > 0, np.log(p_lesion / (1 - p_lesion)), -20.0))
        return Outputs(np.stack(out).astype(np.float32), None)

    val_inputs = evaluate.Split(zoo.data, zoo.raw, zoo.split, "val", "zscore").inputs
    monkeypatch.setattr(evaluate, "predictor", lambda variant, models_dir: shifted)
    metrics, _, curves, _ = evaluate.run(params_for(zoo), zoo.models, zoo.data, zoo.raw, zoo.split,
                                         [by_name("teacher")])
    assert val_ids
    m = metrics["variants"]["teacher"]
    assert m["threshold_from"] == "val" and m["threshold"] == pytest.approx(0.5)  # ties of 0.05..0.65: closest to 0.5
    assert m["dice"] == 0.0
    fixed, _, _, _ = evaluate.run(params_for(zoo, threshold=0.2), zoo.models, zoo.data, zoo.raw, zoo.split,
                                  [by_name("teacher")])
    assert fixed["variants"]["teacher"]["threshold_from"] == "params"
    assert fixed["variants"]["teacher"]["dice"] == 1.0


def test_every_variant_is_scored_by_its_own_file(zoo):
    metrics, rows, curves, samples = evaluate.run(params_for(zoo), zoo.models, zoo.data, zoo.raw, zoo.split)
    assert list(metrics["variants"]) == [v.name for v in VARIANTS]
    assert len(rows) == 6 * len(VARIANTS)
    for name in metrics["variants"]:
        assert 0 <= metrics["variants"][name]["dice"] <= 1
    # pruned (PyTorch) and pruned_onnx are the same network: same predictions up to float rounding
    a = [r["dice"] for r in rows if r["variant"] == "pruned"]
    b = [r["dice"] for r in rows if r["variant"] == "pruned_onnx"]
    assert np.allclose(a, b, atol=0.02, equal_nan=True)
    assert list(samples["preds"]) == ["teacher", INT8_VARIANT]  # shown side by side in the sample figure
    int8 = samples["preds"][INT8_VARIANT]
    assert len(int8) == 6 and int8[0].shape == zoo.masks["benign (2)"].shape
    steps = metrics["paired"]
    assert list(steps) == ["student - teacher", "pruned - student", "pruned_onnx - pruned",
                           "pruned_int8 - pruned_onnx"]  # the deployable file was not scored here
    for name, step in steps.items():
        after, before = name.split(" - ")
        diff = np.mean([a - b for a, b in zip(*([r["dice"] for r in rows if r["variant"] == v and r["ref_pixels"]]
                                                 for v in (after, before)))])
        assert step["mean_diff"] == pytest.approx(diff, abs=1e-4) and step["n"] == metrics["variants"][after]["n_lesion"]
        assert step["ci95"][0] <= step["mean_diff"] <= step["ci95"][1]
    failures = metrics["variants"]["teacher"]["failures"]
    assert failures["missed"]["n"] + failures["sensitivity"]["n"] >= metrics["variants"]["teacher"]["n_lesion"]


def test_a_missing_model_file_is_named(zoo, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"student\.pt.*variant 'student' missing"):
        evaluate.run(params_for(zoo), tmp_path, zoo.data, zoo.raw, zoo.split, [by_name("student")])


def test_stage_writes_metrics_cases_and_plots(zoo, repo_root, tmp_path, params_file):
    params = params_file(tmp_path / "params.yaml", {"preprocess": {"size": zoo.size}, "evaluate": {"bootstrap": 20}})
    out = subprocess.run(
        [sys.executable, str(repo_root / "stages" / "evaluate.py"), "--params", str(params), "--models",
         str(zoo.models), "--data", str(zoo.data), "--raw", str(zoo.raw), "--split", str(zoo.split),
         "--metrics", str(tmp_path / "evaluate.json"), "--cases", str(tmp_path / "cases.csv"),
         "--plots", str(tmp_path / "plots")], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "evaluate.json").read_text())
    assert set(metrics["variants"]) == {v.name for v in VARIANTS} | {"deployed", "accurate"}  # both profiles
    assert len((tmp_path / "cases.csv").read_text().splitlines()) == 1 + 6 * (len(VARIANTS) + 2)
    header = (tmp_path / "plots" / "threshold_curve.csv").read_text().splitlines()[0]
    assert header == "threshold," + ",".join(v.name for v in VARIANTS) + ",deployed,accurate"
    assert metrics["variants"]["deployed"]["postprocess"]["threshold"] == 0.5
    assert set(metrics["paired"]) >= {"deployed - pruned_int8", "deployed - teacher", "pruned_int8 - pruned_onnx",
                                      "accurate - teacher"}
    for name in ("dice_distribution.png", "threshold_curve.png", "samples.png", "roc.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    for name, m in metrics["variants"].items():  # the image-level answer of every variant, on the zoo's test split
        image = m["image_level"]
        assert (image["n_lesion"], image["n_normal"]) == (5, 1) and image["point_from"] in ("val", "deploy")
        roc = (tmp_path / "plots" / "roc" / f"{name}.csv").read_text().splitlines()
        assert roc[0] == "fpr,tpr,threshold" and roc[1].startswith("0.0,0.0,") and roc[-1].startswith("1.0,1.0,")


def test_predictions_are_scored_at_each_images_original_resolution(tmp_path, monkeypatch):
    """Raw images of 40x56 and 48x36 under a 32 px network: a prediction covering the left half of the network's
    input must come back as the left half of each original image, and references are the original masks."""
    from tests.conftest import speckle_image, write_raw
    from ultraseg.io import write_csv
    from ultraseg.pipeline import preprocess

    rng = np.random.default_rng(1)
    shapes = {"benign (1)": (40, 56), "malignant (1)": (48, 36), "benign (2)": (40, 56), "normal (1)": (48, 36)}
    images = {i: speckle_image(rng, *hw) for i, hw in shapes.items()}
    masks = {i: np.zeros(hw, bool) for i, hw in shapes.items()}
    for image_id in ("benign (1)", "malignant (1)", "benign (2)"):
        masks[image_id][:, : shapes[image_id][1] // 2] = True  # left half
    write_raw(tmp_path / "raw", images, masks)
    split = [{"id": i, "class": i.split(" ")[0], "split": "val" if i == "benign (2)" else "test"} for i in shapes]
    write_csv(tmp_path / "split.csv", split, ["id", "class", "split"])
    preprocess.run(tmp_path / "raw", tmp_path / "data", shipped("preprocess", size=32))

    def left_half(batch: np.ndarray) -> np.ndarray:
        logits = np.full(batch.shape, -20.0, np.float32)
        logits[..., :16] = 20.0
        return Outputs(logits, None)

    monkeypatch.setattr(evaluate, "predictor", lambda variant, models_dir: left_half)
    params = shipped_params({"preprocess": {"size": 32}, "evaluate": {"threshold": 0.5, "bootstrap": 10}})
    metrics, rows, _, samples = evaluate.run(params, tmp_path, tmp_path / "data", tmp_path / "raw",
                                             tmp_path / "split.csv", [by_name(INT8_VARIANT)])
    by_id = {r["id"]: r for r in rows}
    for k, image_id in enumerate(samples["split"].ids):
        assert samples["preds"][INT8_VARIANT][k].shape == shapes[image_id]
        assert by_id[image_id]["ref_pixels"] == masks[image_id].sum()
    assert by_id["benign (1)"]["dice"] == by_id["malignant (1)"]["dice"] == 1.0
    assert by_id["normal (1)"]["pred_pixels"] == 48 * 18 and metrics["variants"][INT8_VARIANT]["normal_clean"] == 0.0


def test_the_deployable_file_scores_as_its_int8_model_through_the_runtime(zoo):
    """Raw image in, mask out through the runtime gives exactly what the network-size path gives for the same file
    and threshold: what evaluate reports for the deployable file is what a user gets."""
    params = shipped_params({"preprocess": {"size": zoo.size}, "evaluate": {"threshold": 0.5, "bootstrap": 20}})
    _, rows, _, _ = evaluate.run(params, zoo.models, zoo.data, zoo.raw, zoo.split, [by_name("pruned_int8")],
                                 deployable=zoo.models / "deploy" / "ultraseg.int8.onnx")
    int8 = [(r["id"], r["tp"], r["fp"], r["fn"]) for r in rows if r["variant"] == "pruned_int8"]
    deployed = [(r["id"], r["tp"], r["fp"], r["fn"]) for r in rows if r["variant"] == "deployed"]
    assert int8 == deployed and len(int8) == 6


def test_scores_are_broken_down_by_source_only_when_there_are_several(zoo):
    test = evaluate.Split(zoo.data, zoo.raw, zoo.split, "test", "zscore")
    preds = [ref.copy() for ref in test.refs]
    preds[0] = ~preds[0]
    rows = evaluate.metrics.evaluate_cases(preds, test.refs, test.ids, test.classes)
    params = shipped("evaluate", bootstrap=50)
    assert evaluate.by_source(rows, test, params) == {}
    test.sources = ["a"] + ["b"] * (len(test.ids) - 1)
    both = evaluate.by_source(rows, test, params)["by_source"]
    assert list(both) == ["a", "b"]
    assert both["a"]["n_lesion"] + both["a"]["n_normal"] == 1
    assert both["b"]["n_lesion"] + both["b"]["n_normal"] == len(test.ids) - 1
    assert both["b"]["dice"] == 1.0 and not both["a"]["dice"] == 1.0


def test_image_scores_are_the_calibrated_presence_or_the_highest_pixel_probability():
    probs = [np.array([[0.1, 0.7], [0.2, 0.3]]), np.zeros((2, 3))]
    assert evaluate.image_scores(probs, None, None).tolist() == [0.7, 0.0]
    assert evaluate.image_scores(probs, np.array([0.0, 4.0]), 2.0) == pytest.approx([0.5, 1 / (1 + np.exp(-2.0))])


def test_roc_rows_give_each_variant_one_point_per_distinct_score():
    def row(variant, score, lesion):
        return {"variant": variant, "score": score, "ref_pixels": 10 if lesion else 0}

    rows = [row("a", s, lesion) for s, lesion in ((0.1, False), (0.4, False), (0.35, True), (0.8, True))]
    rows += [row("only_lesions", 0.5, True)]
    roc = evaluate.roc_rows(rows)
    assert list(roc) == ["a"]  # a curve needs both lesion and normal images
    assert [(p["fpr"], p["tpr"]) for p in roc["a"]] == [(0, 0), (0, 0.5), (0.5, 0.5), (0.5, 1), (1, 1)]
    assert [p["threshold"] for p in roc["a"]] == [1.8, 0.8, 0.4, 0.35, 0.1]


def test_roc_figure_draws_each_curve_and_its_val_point(tmp_path):
    rows = [{"variant": v, "score": s, "ref_pixels": 10 if lesion else 0}
            for v in ("teacher", "deployed") for s, lesion in ((0.1, False), (0.4, False), (0.35, True), (0.8, True))]
    from ultraseg import presence

    variants = {v: {"image_level": presence.image_level([0.1, 0.4, 0.35, 0.8], [False, False, True, True], 0.3,
                                                        n_boot=10)} for v in ("teacher", "deployed")}
    evaluate.roc_figure(evaluate.roc_rows(rows), variants, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_image_answer_is_calibrated_and_pointed_on_val_never_on_test():
    """Val presence logits separate the classes at 0; test logits are all shifted down by 3, so the val point
    misses test lesions that a point chosen on test would keep."""
    params = shipped("evaluate", bootstrap=20)
    val_lesion = np.array([True] * 20 + [False] * 10)
    val_logits = np.r_[np.linspace(1, 4, 20), np.linspace(-4, -1, 10)]
    test_lesion = np.array([True] * 10 + [False] * 10)
    test_logits = np.r_[np.linspace(1, 4, 10), np.linspace(-4, -1, 10)] - 3.0
    probs = [np.zeros((2, 2))] * 30
    image, scores = evaluate.image_answer((probs, val_logits, val_lesion), (probs[:20], test_logits, test_lesion),
                                          params, sensitivity=0.95)
    temperature = evaluate.presence.fit_temperature(val_logits, val_lesion)
    assert image["score"] == "presence" and image["temperature"] == temperature
    val_scores = evaluate.presence.calibrate(val_logits, temperature)
    assert image["threshold"] == evaluate.presence.operating_point(val_scores, val_lesion, 0.95)
    assert scores == pytest.approx(evaluate.presence.calibrate(test_logits, temperature))
    assert image["val_auc"] == 1.0 and image["auc"] == 1.0  # ranks survive the shift, the point does not
    assert image["sensitivity"] < 0.95 and image["specificity"] == 1.0
    # without presence logits: the highest pixel probability, uncalibrated
    flat = [np.full((2, 2), p) for p in np.r_[np.linspace(0.6, 0.9, 20), np.linspace(0.1, 0.4, 10)]]
    image, _ = evaluate.image_answer((flat, None, val_lesion), (flat[:20], None, val_lesion[:20]), params, 0.95)
    assert image["score"] == "max_probability" and image["temperature"] is None and np.isnan(image["auc"])
