"""The robustness stage's work on the zoo: every condition scored for every model, drops against the clean run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import shipped_params
from ultraseg import shifts
from ultraseg.pipeline import robustness


def test_run_scores_every_condition_and_summarises_drops(zoo, tmp_path):
    models = robustness.load_models(zoo.models / "onnx" / "teacher.onnx", 0.5,
                                    zoo.models / "deploy" / "ultraseg.int8.onnx")
    summary = robustness.run(models, zoo.raw, zoo.split, seed=0)
    assert set(summary["models"]) == {"teacher", "deployed"} and summary["n_images"] == 6
    for result in summary["models"].values():
        assert set(result["shifts"]) == {s.name for s in shifts.SHIFTS}
        clean = result["clean"]["dice"]
        for by_level in result["shifts"].values():
            for scores in by_level.values():
                assert abs(scores["drop"] - (clean - scores["dice"])) <= 1.5e-4
                assert 0 <= scores["missed"] <= 1 and 0 <= scores["flagged"] <= 1
        moderate = result["by_severity"]["moderate"]
        drops = [result["shifts"][s]["moderate"]["drop"] for s in result["shifts"]]
        assert moderate["worst_drop"] == max(drops)
        assert moderate["most_flagged"] == max(result["shifts"][s]["moderate"]["flagged"] for s in result["shifts"])
        assert abs(moderate["mean_drop"] - sum(drops) / len(drops)) < 1e-4
        for key in ("auc", "sensitivity", "specificity"):  # the image-level answer under each shift
            values = [result["shifts"][s]["moderate"][key] for s in result["shifts"]]
            assert moderate[f"lowest_{key}"] == min(values) and all(0 <= v <= 1 for v in values)
    assert summary["operating_points"]["deployed"]["from"].startswith("the file")
    again = robustness.run(models, zoo.raw, zoo.split, seed=0)
    assert json.dumps(again, sort_keys=True) == json.dumps(summary, sort_keys=True)
    robustness.figure(summary, tmp_path / "drop.png")
    assert (tmp_path / "drop.png").read_bytes()[:4] == b"\x89PNG"


def test_report_section_quotes_the_file(zoo):
    from ultraseg.pipeline.report import sections

    models = robustness.load_models(zoo.models / "onnx" / "teacher.onnx", 0.5,
                                    zoo.models / "deploy" / "ultraseg.int8.onnx")
    summary = robustness.run(models, zoo.raw, zoo.split, seed=0)
    text = sections.robustness_section(summary)
    moderate = summary["models"]["deployed"]["by_severity"]["moderate"]
    assert f"| deployed | moderate | {moderate['mean_drop']:.3f} | {moderate['worst_shift']} " in text
    blur = summary["models"]["teacher"]["shifts"]["blur"]["strong"]
    assert "| blur (1.0, 2.0, 3.0) | " in text and f"{blur['dice']:.3f} ({blur['missed']:.0%})" in text


def test_the_suite_runs_on_val_for_choosing(zoo):
    models = robustness.load_models(zoo.models / "onnx" / "teacher.onnx", 0.5,
                                    zoo.models / "deploy" / "ultraseg.int8.onnx")
    summary = robustness.run(models, zoo.raw, zoo.split, seed=0, split="val")
    assert summary["split"] == "val" and summary["n_images"] == 3  # the zoo's val images, none of test's


def test_val_summary_is_the_deployed_files_val_run(zoo):
    """The stage's val summary is the val run of the deployed file alone, cut to what a lever is chosen by."""
    deployed = robustness.load_models(zoo.models / "onnx" / "teacher.onnx", 0.5,
                                      zoo.models / "deploy" / "ultraseg.int8.onnx")["deployed"]
    summary = robustness.val_summary(deployed, zoo.raw, zoo.split, seed=0)
    full = robustness.run({"deployed": deployed}, zoo.raw, zoo.split, seed=0, split="val")["models"]["deployed"]
    assert summary == {"split": "val", "deployed": {"clean": full["clean"], "by_severity": full["by_severity"]}}


def test_stream_summary_scores_both_models_on_one_clip(zoo):
    from ultraseg import clips
    from ultraseg.params import StreamParams, to_dict

    models = robustness.load_models(zoo.models / "onnx" / "teacher.onnx", 0.5,
                                    zoo.models / "deploy" / "ultraseg.int8.onnx")
    models["deployed"].stream_rule = models["teacher"].stream_rule = StreamParams("debounce", 3, 0.5)
    summary = robustness.stream_summary(models, zoo.raw, zoo.split, seed=0)
    assert summary["frames"] == clips.RUNS * clips.RUN_FRAMES and summary["split"] == "test"
    for name in ("teacher", "deployed"):
        result = summary[name]
        assert result["stream"] == to_dict(StreamParams("debounce", 3, 0.5))
        # debouncing can only remove flips, and a change shows no sooner than frames - 1 later
        assert result["smoothed"]["flips_per_100"] <= result["per_frame"]["flips_per_100"]
        assert 0 <= result["smoothed"]["accuracy"] <= 1
    assert robustness.stream_summary(models, zoo.raw, zoo.split, seed=0) == summary


def test_the_teacher_is_smoothed_as_the_deployable_file_is(zoo):
    models = robustness.load_models(zoo.models / "onnx" / "teacher.onnx", 0.5,
                                    zoo.models / "deploy" / "ultraseg.int8.onnx")
    assert models["teacher"].stream_rule == models["deployed"].stream_rule


def test_ood_summary_scores_the_built_set_and_the_scans(zoo, tmp_path):
    from ultraseg import ood_frames
    from ultraseg.pipeline import deploy
    from ultraseg.runtime import Segmenter
    from tests.conftest import train_val_split

    params = shipped_params({"preprocess": {"size": zoo.size},
                                   "deploy": {"threshold_step": 0.25, "gates": [0.0], "min_areas": [0.0]}})
    deploy.run(params, zoo.models / "pruned.int8.onnx", zoo.raw, train_val_split(zoo, tmp_path / "split.csv"),
               tmp_path / "deploy.onnx")
    segmenter = Segmenter(tmp_path / "deploy.onnx")
    summary = robustness.ood_summary(segmenter, zoo.raw, zoo.split, seed=0)
    built = ood_frames.build(0)
    flags = [not segmenter.segment(f.image).in_distribution for f in built]
    assert summary["checked"] and summary["threshold"] == round(segmenter.ood.threshold, 4)
    assert summary["built"]["frames"] == len(built) and summary["built"]["flagged"] == round(sum(flags) / len(flags), 4)
    assert summary["built"]["by_kind"]["blank"] == {"frames": 3, "flagged": 1.0}
    assert sum(summary["built"]["reasons"].values()) == len(built)
    assert summary["built"]["reasons"]["constant frame"] == 3
    assert summary["scans"]["split"] == "test" and summary["scans"]["images"] == 6
    assert sum(summary["scans"]["reasons"].values()) == 6
    assert summary["scans"]["flagged"] == round(1 - summary["scans"]["reasons"].get("in distribution", 0) / 6, 4)


def test_ood_summary_of_a_file_without_the_check(zoo):
    deployed = robustness.load_models(zoo.models / "onnx" / "teacher.onnx", 0.5,
                                      zoo.models / "deploy" / "ultraseg.int8.onnx")["deployed"]
    summary = robustness.ood_summary(deployed, zoo.raw, zoo.split, seed=0, split="val")
    assert not summary["checked"] and summary["threshold"] is None
    assert summary["built"]["reasons"] == {"constant frame": 3, "not checked": summary["built"]["frames"] - 3}
    assert summary["scans"] == {"split": "val", "images": 3, "flagged": 0.0, "reasons": {"not checked": 3}}


def test_summary_keeps_the_lowest_image_level_figures_per_severity():
    """Per severity, the lowest AUC, sensitivity and specificity over shifts, leaving out shifts where one is
    undefined (NaN: a class missing)."""
    def scores(dice, auc, sensitivity, specificity):
        return {"dice": dice, "normal_clean": 1.0, "n_lesion": 2, "missed": 0.0, "flagged": 0.0, "auc": auc,
                "sensitivity": sensitivity, "specificity": specificity}

    nan = float("nan")
    result = {robustness.NONE: {robustness.NONE: scores(0.8, 0.95, 1.0, 0.9)}}
    for k, shift in enumerate(shifts.SHIFTS):
        result[shift.name] = {level: scores(0.7, nan if k == 0 else 0.9 - 0.01 * k, 0.8, 0.5 + 0.01 * k)
                              for level in shifts.SEVERITIES}
    moderate = robustness.summarize(result)["by_severity"]["moderate"]
    last = len(shifts.SHIFTS) - 1
    assert moderate["lowest_auc"] == round(0.9 - 0.01 * last, 4) and moderate["lowest_specificity"] == 0.5
    assert moderate["lowest_sensitivity"] == 0.8 and moderate["worst_drop"] == 0.1


def test_a_file_without_a_stored_point_is_pointed_on_unshifted_val(zoo):
    from ultraseg import presence
    from ultraseg.data.busi import load_raw
    from ultraseg.io import split_ids

    models = robustness.load_models(zoo.models / "onnx" / "teacher.onnx", 0.5,
                                    zoo.models / "deploy" / "ultraseg.int8.onnx")
    points = robustness.operating_points(models, zoo.raw, zoo.split, 0.95)
    raw = [load_raw(zoo.raw, i) for i in split_ids(zoo.split, "val")]
    for name, segmenter in models.items():
        if segmenter.meta.get("presence") is None:  # the teacher's ONNX file stores no image-level point
            scores = [segmenter.segment(image).score for image, _ in raw]
            assert points[name] == presence.operating_point(scores, [m.any() for _, m in raw], 0.95)
        else:
            assert points[name] is None
    assert points["teacher"] is not None


def test_a_presence_file_without_a_stored_answer_is_calibrated_on_unshifted_val(zoo, tmp_path):
    import torch

    from tests.conftest import TINY, shipped
    from ultraseg import onnx_io, presence
    from ultraseg.data.busi import load_raw
    from ultraseg.io import split_ids
    from ultraseg.models import build_model
    from ultraseg.runtime import Segmenter

    torch.manual_seed(3)
    config = {"name": "unet", "widths": TINY, "up": "nearest", "presence": True}
    meta = onnx_io.read_metadata(zoo.models / "onnx" / "pruned.onnx") | {"model": config}
    onnx_io.export(build_model(config).eval(), tmp_path / "net.onnx", shipped("export"), meta)
    with pytest.warns(UserWarning):
        models = {"teacher": Segmenter(tmp_path / "net.onnx")}
    points = robustness.operating_points(models, zoo.raw, zoo.split, 0.95)
    raw = [load_raw(zoo.raw, i) for i in split_ids(zoo.split, "val")]
    logits = [models["teacher"].outputs(image)[1] for image, _ in raw]
    lesion = [mask.any() for _, mask in raw]
    temperature = presence.fit_temperature(logits, lesion)
    assert points["teacher"] is None and models["teacher"].presence.temperature == pytest.approx(temperature)
    assert models["teacher"].operating_point == pytest.approx(
        presence.operating_point(presence.calibrate(logits, temperature), lesion, 0.95))
    summary = robustness.run(models, zoo.raw, zoo.split, seed=0, points=points)
    assert summary["operating_points"]["teacher"]["from"].startswith("unshifted val (presence calibrated")
