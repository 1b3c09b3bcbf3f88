"""The out-of-distribution check in the runtime: odd frames get an answer with a reason and never raise, a frame
far from the training scans gets no lesion answer, and files without the check load and say so."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.conftest import shipped_params, speckle_image, train_val_split
from ultraseg.runtime import Segmenter
from ultraseg.runtime.ood import FEATURES, NOT_CHECKED, OodCheck, frame_problem
from ultraseg.runtime.postprocess import PostProcess

ODD = {"1x1": np.zeros((1, 1), np.uint8), "constant": np.full((64, 80), 90, np.uint8),
       "uint16": np.random.default_rng(0).integers(0, 65536, (64, 80), dtype=np.uint16),
       "rgba": np.random.default_rng(1).integers(0, 256, (64, 80, 4), dtype=np.uint8),
       "all_nan": np.full((64, 80), np.nan, np.float32), "some_inf": np.where(np.eye(64, 80) > 0, np.inf, 1.0)}


@pytest.fixture(scope="module")
def checked(zoo, tmp_path_factory):
    """The zoo's int8 file with the features output and a check fitted on its train and val scans, every frame
    passing a gate of 0 so that any mask it draws shows."""
    from ultraseg.pipeline import deploy

    root = tmp_path_factory.mktemp("ood")
    params = shipped_params({"preprocess": {"size": zoo.size},
                                   "deploy": {"threshold_step": 0.25, "gates": [0.0], "min_areas": [0.0]}})
    out = root / "deploy.onnx"
    summary = deploy.run(params, zoo.models / "pruned.int8.onnx", zoo.raw, train_val_split(zoo, root / "split.csv"),
                         out)
    return out, summary


def test_frame_problem_names_what_is_wrong():
    assert frame_problem(ODD["1x1"], min_side=32).startswith("too small (1x1 px")
    assert frame_problem(ODD["constant"]) == "constant frame"
    assert frame_problem(ODD["all_nan"]) == "not finite" == frame_problem(ODD["some_inf"])
    assert frame_problem(ODD["uint16"]) == "" == frame_problem(ODD["rgba"])
    assert frame_problem(np.zeros((0, 5))) == "empty frame"


def test_distance_is_mahalanobis():
    check = OodCheck(mean=np.array([1.0, 2.0]), whiten=np.diag([1.0, 0.5]), threshold=2.0)
    assert check.distance(np.array([4.0, 6.0])) == pytest.approx(np.hypot(3.0, 2.0))
    assert check.reason(np.array([1.0, 4.0])) == ""
    assert check.reason(np.array([4.0, 6.0])) == "features far from the training scans (distance 3.61 > 2)"
    assert check.distance(np.array([np.nan, 0.0])) == float("inf")


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_frames_get_an_answer_with_a_reason(checked, zoo, name):
    image = ODD[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmenters = [Segmenter(checked[0]), Segmenter(zoo.models / "deploy" / "ultraseg.int8.onnx")]
    for segmenter in segmenters:
        result = segmenter.segment(image)
        assert result.mask.shape == image.shape[:2] and result.probability.shape == image.shape[:2]
        assert result.ood_reason != "" or result.in_distribution
        if not result.in_distribution:
            assert result.ood_reason and not result.lesion_present and not result.mask.any()
        if name in ("1x1", "constant", "all_nan", "some_inf"):  # refused before the network, with or without a check
            assert not result.in_distribution and result.score == 0.0


def test_a_frame_far_from_the_training_scans_gets_no_lesion_answer(checked):
    out, summary = checked
    segmenter = Segmenter(out, postprocess=PostProcess(threshold=0.0))  # every pixel is lesion when answered
    scan = speckle_image(np.random.default_rng(5), 32, 32)
    assert segmenter.ood.threshold == pytest.approx(summary["ood"]["threshold"], abs=1e-4)
    far = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)  # a checkerboard
    d = segmenter.ood.distance(segmenter.features(far))
    assert d > segmenter.ood.threshold
    result = segmenter.segment(far)
    assert not result.in_distribution and not result.lesion_present and result.area_px == 0
    threshold = segmenter.ood.threshold
    assert result.ood_reason == f"features far from the training scans (distance {d:.3g} > {threshold:.3g})"
    near = segmenter.segment(scan)
    assert near.in_distribution == (segmenter.ood.distance(segmenter.features(scan)) <= segmenter.ood.threshold)
    assert near.lesion_present == near.in_distribution  # the rule draws everywhere unless the check says no


def test_a_stream_never_draws_on_a_frame_out_of_distribution(checked):
    from ultraseg.params import StreamParams

    segmenter = Segmenter(checked[0], postprocess=PostProcess(threshold=0.0), stream=StreamParams("debounce", 3, 0.5))
    frames = [speckle_image(np.random.default_rng(k), 32, 32) for k in range(3)] + [ODD["constant"]]
    results = list(segmenter.stream(frames))
    assert not results[-1].in_distribution and not results[-1].lesion_present and not results[-1].mask.any()


def test_files_without_the_check_answer_every_frame_not_checked(zoo):
    with pytest.warns(UserWarning, match="no out-of-distribution check"):
        segmenter = Segmenter(zoo.models / "onnx" / "teacher.onnx")
    result = segmenter.segment(speckle_image(np.random.default_rng(2), 40, 50))
    assert result.in_distribution and result.ood_reason == NOT_CHECKED
    assert segmenter.ood is None


def test_metadata_without_the_features_output_is_not_checked(checked, tmp_path):
    """The ``ood`` metadata alone, on a file whose graph lacks the ``features`` output, checks nothing."""
    import onnx

    model = onnx.load(str(checked[0]))
    keep = [o for o in model.graph.output if o.name != FEATURES]
    assert len(keep) == len(model.graph.output) - 1
    del model.graph.output[:]
    model.graph.output.extend(keep)
    stripped = tmp_path / "stripped.onnx"
    onnx.save(model, str(stripped))
    with pytest.warns(UserWarning, match="no out-of-distribution check"):
        segmenter = Segmenter(stripped)
    assert "ood" in segmenter.meta and segmenter.ood is None
    assert segmenter.segment(speckle_image(np.random.default_rng(2), 40, 50)).ood_reason == NOT_CHECKED
