"""The out-of-distribution check in the runtime: odd frames get an answer with a reason and never raise, a frame
far from the training scans gets no lesion answer, and files without the check load and say so."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.conftest import shipped_params, speckle_image, train_val_split
from ultraseg.runtime import Segmenter
from ultraseg.runtime.ood import (FEATURES, NOT_CHECKED, STATS, STATS_SIDE, STATS_VERSION, Gaussian, OodCheck,
                                  frame_problem, frame_stats)
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


def test_the_frame_statistics_block_adds_its_scaled_squared_distance():
    stats = Gaussian(mean=np.zeros(len(STATS)), whiten=np.eye(len(STATS)) * 0.5, scale=2.0)
    check = OodCheck(mean=np.array([1.0, 2.0]), whiten=np.diag([1.0, 0.5]), threshold=2.0, scale=4.0, stats=stats)
    frame = speckle_image(np.random.default_rng(3), 60, 80)
    expected = 9.0 / 4.0 + np.sum((0.5 * frame_stats(frame)) ** 2) / 2.0  # (3^2 + 0) / 4, |0.5 s|^2 / 2
    assert check.distance(np.array([4.0, 2.0]), frame) == pytest.approx(np.sqrt(expected))
    with pytest.raises(ValueError, match="pass the frame"):
        check.distance(np.array([4.0, 2.0]))


def test_old_metadata_without_frame_statistics_measures_the_features_alone():
    meta = {"mean": [1.0, 2.0], "whiten": [[1.0, 0.0], [0.0, 0.5]], "threshold": 2.0, "min_side": 32}
    check = OodCheck.from_meta(meta)
    assert check.stats is None and check.scale == 1.0 and check.min_side == 32
    assert check.distance(np.array([4.0, 6.0])) == pytest.approx(np.hypot(3.0, 2.0))
    assert check.reason(np.array([4.0, 6.0]), ODD["rgba"]) == check.reason(np.array([4.0, 6.0])) != ""


def test_frame_statistics_of_another_definition_are_refused():
    meta = {"mean": [0.0], "whiten": [[1.0]], "threshold": 1.0,
            "frame_stats": {"mean": [0.0], "whiten": [[1.0]], "scale": 1.0, "version": STATS_VERSION + 1}}
    with pytest.raises(ValueError, match=f"version {STATS_VERSION + 1}; this runtime computes version"):
        OodCheck.from_meta(meta)


@pytest.mark.parametrize("name", sorted(ODD))
def test_frame_stats_never_raise(name):
    stats = frame_stats(ODD[name])
    assert stats.shape == (len(STATS),) and stats.dtype == np.float64


def test_frame_stats_measure_what_they_name():
    named = lambda image: dict(zip(STATS, frame_stats(image)))  # noqa: E731
    ramp = np.repeat(np.linspace(255, 0, 4 * STATS_SIDE)[:, None], 3 * STATS_SIDE, axis=1).astype(np.uint8)
    down = named(ramp)
    assert down["q50"] == pytest.approx(0.5, abs=0.02) and down["q05"] == pytest.approx(0.05, abs=0.02)
    assert down["top_minus_bottom"] == pytest.approx(2 / 3, abs=0.02)  # the top third's mean minus the bottom's
    assert down["log_grad_x_over_y"] < -5  # a vertical ramp has no horizontal gradient
    assert down["dark"] == pytest.approx(np.sqrt(11 / 256), abs=0.02) and down["colour"] == 0.0
    assert named(ramp.T)["log_grad_x_over_y"] > 5
    grey = speckle_image(np.random.default_rng(4), 300, 400)
    as_rgb, as_16bit = np.repeat(grey[..., None], 3, axis=2), grey.astype(np.uint16) * 257
    np.testing.assert_allclose(frame_stats(as_rgb), frame_stats(grey), atol=1e-6)
    np.testing.assert_allclose(frame_stats(as_16bit), frame_stats(grey), atol=1e-6)
    np.testing.assert_allclose(frame_stats(as_rgb[..., ::-1]), frame_stats(grey), atol=1e-6)  # a strided view
    tinted = as_rgb.copy()
    tinted[..., 0] = 255
    assert named(tinted)["colour"] > 0.5 and named(grey)["speckle_cv90"] > named(ramp)["speckle_cv90"]


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
    d = segmenter.ood.distance(segmenter.features(far), far)
    assert d > segmenter.ood.threshold
    result = segmenter.segment(far)
    assert not result.in_distribution and not result.lesion_present and result.area_px == 0
    threshold = segmenter.ood.threshold
    assert result.ood_reason == f"features far from the training scans (distance {d:.3g} > {threshold:.3g})"
    near = segmenter.segment(scan)
    assert near.in_distribution == (segmenter.ood.distance(segmenter.features(scan), scan) <= segmenter.ood.threshold)
    assert near.lesion_present == near.in_distribution  # the rule draws everywhere unless the check says no


def test_a_stream_never_draws_on_a_frame_out_of_distribution(checked):
    from ultraseg.params import StreamParams

    segmenter = Segmenter(checked[0], postprocess=PostProcess(threshold=0.0), stream=StreamParams("debounce", 3, 0.5))
    frames = [speckle_image(np.random.default_rng(k), 32, 32) for k in range(3)] + [ODD["constant"]]
    results = list(segmenter.stream(frames))
    assert not results[-1].in_distribution and not results[-1].lesion_present and not results[-1].mask.any()


def test_a_file_with_old_ood_metadata_still_loads_and_checks_its_features(checked, tmp_path):
    """A file written before the frame statistics (no ``frame_stats``, no ``scale``) is checked on its features."""
    from ultraseg import onnx_io

    old = tmp_path / "old.onnx"
    meta = Segmenter(checked[0]).meta["ood"]
    onnx_io.write_with_metadata(checked[0], old, {"ood": {k: meta[k] for k in ("mean", "whiten", "min_side")}
                                                  | {"threshold": 0.0}})
    segmenter = Segmenter(old)
    assert segmenter.ood.stats is None and segmenter.ood.scale == 1.0
    scan = speckle_image(np.random.default_rng(6), 40, 50)
    d = float(np.linalg.norm(segmenter.ood.whiten @ (segmenter.features(scan) - segmenter.ood.mean)))
    result = segmenter.segment(scan)
    assert not result.in_distribution
    assert result.ood_reason == f"features far from the training scans (distance {d:.3g} > 0)"


def test_a_file_whose_frame_statistics_this_runtime_does_not_compute_is_refused_naming_it(checked, tmp_path):
    from ultraseg import onnx_io
    from ultraseg.errors import DataError

    newer = tmp_path / "newer.onnx"
    meta = Segmenter(checked[0]).meta["ood"]
    meta["frame_stats"]["version"] = STATS_VERSION + 1
    onnx_io.write_with_metadata(checked[0], newer, {"ood": meta})
    with pytest.raises(DataError, match=rf"^{newer}: bad metadata: .*version {STATS_VERSION + 1}"):
        Segmenter(newer)


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
