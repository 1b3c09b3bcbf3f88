"""The deploy stage's work: the post-processing grid, the choice rule, and the deployable file it writes."""

from __future__ import annotations

import json

import pytest

from ultraseg.pipeline import deploy
from ultraseg.runtime import Segmenter
from ultraseg.params import to_dict
from ultraseg.runtime.postprocess import PostProcess
from tests.conftest import shipped, shipped_params, train_val_split


def test_grid_leaves_out_gates_that_change_nothing():
    rules = deploy.candidate_rules(shipped("deploy", threshold_step=0.25, gates=(0.0, 0.6), min_areas=(0.0,),
                                           keep_largest=(False,)))
    assert [(r.threshold, r.gate) for r in rules] == [(0.25, 0.0), (0.25, 0.6), (0.5, 0.0), (0.5, 0.6), (0.75, 0.0)]


def test_choice_prefers_clean_normals_within_the_dice_tolerance():
    scores = [{"dice": 0.80, "normal_clean": 0.5}, {"dice": 0.797, "normal_clean": 0.9},
              {"dice": 0.70, "normal_clean": 1.0}, {"dice": 0.797, "normal_clean": 0.9}]
    assert deploy.choose(scores, 0.005) == 1  # the tie goes to the earlier, simpler rule
    assert deploy.choose(scores, 0.0) == 0
    assert deploy.choose(scores, 0.2) == 2
    costly = [scores[1] | {"cost": 1}, scores[3]]
    assert deploy.choose(costly, 0.005) == 1  # the flip's second model call loses a tie


def test_operating_points_are_the_pareto_front_most_clean_first():
    rules = [PostProcess(threshold=t) for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
    scores = [{"dice": 0.80, "normal_clean": 0.2}, {"dice": 0.78, "normal_clean": 0.5},
              {"dice": 0.79, "normal_clean": 0.2},  # beaten on Dice by rule 0 at the same clean share
              {"dice": 0.70, "normal_clean": 0.9}, {"dice": 0.60, "normal_clean": 0.7},  # beaten on both by rule 3
              {"dice": 0.70, "normal_clean": 0.9}]  # equal to rule 3: the earlier rule stands for both
    front = deploy.operating_points(rules, scores)
    assert [(p["threshold"], p["normal_clean"], p["dice"]) for p in front] == [(0.4, 0.9, 0.7), (0.2, 0.5, 0.78),
                                                                                (0.1, 0.2, 0.8)]
    assert set(front[0]) == {"dice", "normal_clean", *PostProcess().to_dict()}
    sensitive = [s | {"sensitivity": 1.0 if k in (1, 4) else 0.9} for k, s in enumerate(scores)]
    front = deploy.operating_points(rules, sensitive, 0.95)  # only rules 1 and 4 reach the target
    assert [(p["threshold"], p["normal_clean"]) for p in front] == [(0.5, 0.7), (0.2, 0.5)]


@pytest.mark.parametrize("flips", [[False, True], [False]])
def test_run_writes_a_file_the_runtime_uses_with_the_chosen_rule(zoo, tmp_path, flips):
    params = shipped_params({"preprocess": {"size": zoo.size},
                            "deploy": {"threshold_step": 0.1, "gates": [0.0, 0.9], "min_areas": [0.0, 0.01],
                                       "flips": flips}})
    out = tmp_path / "deploy" / "ultraseg.int8.onnx"
    split = train_val_split(zoo, tmp_path / "split.csv")
    summary = deploy.run(params, zoo.models / "pruned.int8.onnx", zoo.raw, split, out)
    rule = PostProcess.from_dict(summary["postprocess"])
    assert Segmenter(out).postprocess == rule
    assert Segmenter(out).meta["threshold"] == rule.threshold
    assert Segmenter(out).flip is summary["flip"] and isinstance(summary["flip"], bool)
    assert Segmenter(out).stream_rule == params.deploy.stream
    assert summary["stream"] == to_dict(params.deploy.stream)
    assert summary["val_images"] == 3
    assert summary["rules_tried"] == len(flips) * len(deploy.candidate_rules(params.deploy))
    assert ("val_threshold_only_flip" in summary) == (True in flips)
    assert summary["flip"] in flips
    assert summary["val_chosen"]["normal_clean"] >= summary["val_threshold_only"]["normal_clean"]
    assert summary["val_chosen"]["dice"] >= summary["val_threshold_only"]["dice"] - 0.005 - 1e-9
    assert summary["postprocess"] in [{k: p[k] for k in rule.to_dict()} for p in summary["val_operating_points"]]
    json.dumps(summary)


def test_run_stores_an_ood_check_that_val_passes(zoo, tmp_path):
    """The deployable file carries the features output and a check fitted on train whose threshold lets at least
    ``val_pass`` of the val scans through, as the runtime answers them."""
    from ultraseg.data.busi import load_raw
    from ultraseg.io import split_ids
    from ultraseg.runtime.ood import FEATURES

    params = shipped_params({"preprocess": {"size": zoo.size},
                                   "deploy": {"threshold_step": 0.25, "gates": [0.0], "min_areas": [0.0],
                                              "ood": {"val_pass": 0.6, "min_side": 20}}})
    split = train_val_split(zoo, tmp_path / "split.csv")
    out = tmp_path / "deploy.onnx"
    summary = deploy.run(params, zoo.models / "pruned.int8.onnx", zoo.raw, split, out)["ood"]
    segmenter = Segmenter(out)
    assert FEATURES in [o.name for o in segmenter.session.get_outputs()]
    assert segmenter.ood is not None and segmenter.ood.min_side == 20
    assert summary["train_images"] == len(split_ids(split, "train")) == 6
    assert summary["fitted_frames"] == 6 * (1 + params.deploy.ood.augmented_copies) == 12
    assert summary["frame_stats"] == len(segmenter.ood.stats.mean) > 0
    assert summary["features"] == len(segmenter.ood.mean) and summary["val_pass_target"] == 0.6
    val = [load_raw(zoo.raw, i)[0] for i in split_ids(split, "val")]
    passed = [segmenter.segment(image).in_distribution for image in val]
    assert summary["val_pass"] == round(sum(passed) / len(passed), 4) >= 0.6
    distances = sorted(segmenter.ood.distance(segmenter.features(image), image) for image in val)
    assert summary["threshold"] == pytest.approx(distances[1], abs=1e-4)  # the 2nd of 3: 2/3 >= 0.6 > 1/3


def test_run_needs_train_scans_for_the_ood_check(zoo, tmp_path):
    params = shipped_params({"preprocess": {"size": zoo.size},
                                   "deploy": {"threshold_step": 0.25, "gates": [0.0], "min_areas": [0.0]}})
    with pytest.raises(ValueError, match=f"{zoo.split}: no image in split 'train'"):
        deploy.run(params, zoo.models / "pruned.int8.onnx", zoo.raw, zoo.split, tmp_path / "deploy.onnx")


def test_score_counts_lesion_dice_and_clean_normals():
    import numpy as np

    prob = np.zeros((10, 10), np.float32)
    prob[:5] = 0.9
    ref = np.zeros((10, 10), bool)
    ref[:5, :5] = True
    result = deploy.score(PostProcess(), [prob, prob, np.zeros_like(prob)], [ref, np.zeros_like(ref), np.zeros_like(ref)])
    assert result == {"dice": pytest.approx(2 * 25 / (50 + 25)), "normal_clean": 0.5, "sensitivity": 1.0}


def test_score_applies_the_presence_answer():
    import numpy as np

    prob = np.zeros((10, 10), np.float32)
    prob[:5] = 0.9
    prob[7, 7] = 0.4  # below the threshold: only the fill finds it
    ref = np.zeros((10, 10), bool)
    ref[:5, :5] = True
    probs, refs = [prob, prob, prob * 0.5], [ref, np.zeros_like(ref), ref]
    # lesion, normal, lesion whose pixels all fall below the threshold
    plain = deploy.score(PostProcess(), probs, refs, [True, False, True])
    assert plain["normal_clean"] == 1.0  # the normal scan is answered "no lesion": nothing drawn
    assert plain["sensitivity"] == 0.5  # the faint lesion is answered but nothing is drawn
    filled = deploy.score(PostProcess(), probs, refs, [True, False, True], fill_empty=True)
    assert filled["sensitivity"] == 1.0 and filled["dice"] > plain["dice"]
    denied = deploy.score(PostProcess(), probs, refs, [False, False, False])
    assert denied["sensitivity"] == 0.0 and denied["dice"] == 0.0


def test_choice_refuses_rules_below_the_sensitivity_target():
    scores = [{"dice": 0.80, "normal_clean": 0.9, "sensitivity": 0.90},
              {"dice": 0.79, "normal_clean": 0.5, "sensitivity": 0.96},
              {"dice": 0.70, "normal_clean": 0.6, "sensitivity": 1.00}]
    assert deploy.choose(scores, 0.05) == 0  # no target: the cleanest within the tolerance
    assert deploy.choose(scores, 0.05, sensitivity=0.95) == 1
    assert deploy.choose(scores, 0.2, sensitivity=0.95) == 2
    assert deploy.choose(scores[:1], 0.05, sensitivity=0.95) == 0  # none meets it: the most sensitive


@pytest.fixture(scope="module")
def presence_int8(zoo, tmp_path_factory):
    """The zoo's pruned network rebuilt with a presence head, exported and quantised like the pipeline's."""
    import numpy as np
    import torch

    from ultraseg import onnx_io, quantization
    from ultraseg.data.dataset import Preprocessed
    from ultraseg.models import build_model
    from ultraseg.runtime.preprocess import normalize

    folder = tmp_path_factory.mktemp("presence")
    meta = onnx_io.read_metadata(zoo.models / "onnx" / "pruned.onnx")
    config = meta["model"] | {"presence": True}
    torch.manual_seed(1)
    model = build_model(config).eval()
    onnx_io.export(model, folder / "pruned.onnx", shipped("export"), meta | {"model": config})
    images = normalize(Preprocessed.load(zoo.data).images, "zscore").astype(np.float32)
    quantization.quantize(folder / "pruned.onnx", folder / "pruned.int8.onnx", images,
                          shipped("quantize", calibration_images=8))
    return folder / "pruned.int8.onnx"


def test_run_calibrates_the_presence_answer_and_stores_it(zoo, presence_int8, tmp_path):
    import numpy as np

    from ultraseg import presence
    from ultraseg.data.busi import load_raw
    from ultraseg.io import split_ids

    params = shipped_params({"preprocess": {"size": zoo.size},
                             "deploy": {"threshold_step": 0.25, "gates": [0.0, 0.9], "min_areas": [0.0],
                                        "flips": [False]}})
    split = train_val_split(zoo, tmp_path / "split.csv")
    out = tmp_path / "deploy.onnx"
    summary = deploy.run(params, presence_int8, zoo.raw, split, out)
    segmenter = Segmenter(out)
    stored = segmenter.meta["presence"]
    assert stored == {"temperature": pytest.approx(summary["presence"]["temperature"], abs=1e-6),
                      "threshold": pytest.approx(summary["presence"]["threshold"], abs=1e-6),
                      "fill_empty": params.deploy.presence.fill_empty,
                      "sensitivity": params.deploy.presence.sensitivity}
    assert segmenter.operating_point == stored["threshold"]
    # the stored answer is the one fitted on the int8 file's own val logits
    val = [load_raw(zoo.raw, i) for i in split_ids(split, "val")]
    logits = np.array([segmenter.outputs(image)[1] for image, _ in val])
    labels = np.array([mask.any() for _, mask in val])
    assert stored["temperature"] == pytest.approx(presence.fit_temperature(logits, labels), rel=1e-4)
    results = [segmenter.segment(image) for image, _ in val]
    scores = presence.calibrate(logits, stored["temperature"])
    np.testing.assert_allclose([r.score for r in results], scores, atol=1e-5)
    assert all(r.lesion_present == (r.score >= stored["threshold"]) for r in results)
    assert all(r.lesion_present for r, lesion in zip(results, labels) if lesion)  # sensitivity 0.95 of 2 scans
    assert summary["presence"]["val_sensitivity"] == 1.0
    assert summary["presence"]["val_auc"] == pytest.approx(presence.roc_auc(scores, labels), abs=1e-4)
    assert summary["val_chosen"]["sensitivity"] >= params.deploy.presence.sensitivity
    assert summary["presence"]["rule_meets_target"]
    assert all(p["sensitivity"] >= params.deploy.presence.sensitivity for p in summary["val_operating_points"])
    json.dumps(summary)


def test_the_accurate_profile_deploys_the_teacher_where_the_commands_look(zoo, repo_root, tmp_path, params_file):
    """``--profile accurate`` makes the teacher's deployable file from the fp32 teacher, with its own metrics, and
    leaves the edge profile's file alone."""
    import shutil
    import subprocess
    import sys

    from ultraseg.runtime.model_files import profile_file

    shutil.copytree(zoo.models, tmp_path / "models")
    shutil.copytree(zoo.raw, tmp_path / "data" / "raw")
    train_val_split(zoo, tmp_path / "data" / "split.csv")
    profile_file("accurate", tmp_path / "models").unlink()
    edge = profile_file("edge", tmp_path / "models").read_bytes()
    params_file(tmp_path / "params.yaml", {"preprocess": {"size": zoo.size},
                                           "deploy": {"threshold_step": 0.25, "gates": [0.0], "min_areas": [0.0]}})
    out = subprocess.run([sys.executable, str(repo_root / "stages" / "deploy.py"), "--profile", "accurate"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "deploy (accurate):" in out.stdout
    summary = json.loads((tmp_path / "metrics" / "deploy_accurate.json").read_text())
    assert not (tmp_path / "metrics" / "deploy.json").exists()
    made = Segmenter(profile_file("accurate", tmp_path / "models"))
    assert made.meta["kind"] == "teacher" and made.ood is not None
    assert made.postprocess == PostProcess.from_dict(summary["postprocess"])
    assert profile_file("edge", tmp_path / "models").read_bytes() == edge
