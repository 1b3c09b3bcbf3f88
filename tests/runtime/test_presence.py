"""The image-level answer in the runtime: the presence output calibrated and compared with the stored operating
point, the mask following it, older files falling back to the highest probability, and odd frames answered."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.conftest import TINY, shipped, speckle_image
from ultraseg import onnx_io
from ultraseg.errors import DataError
from ultraseg.models import build_model
from ultraseg.params import StreamParams
from ultraseg.runtime import PostProcess, Segmenter
from ultraseg.runtime.postprocess import Presence

LOGIT = 2.0
"""Every image's presence logit: the head's weights are zeroed and its bias set, so the answer is scripted."""
CONFIG = {"name": "unet", "widths": TINY, "up": "nearest", "presence": True}


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture(scope="module")
def network(zoo, tmp_path_factory):
    """A tiny presence network exported with the zoo's metadata (no presence entry yet)."""
    torch.manual_seed(0)
    model = build_model(CONFIG).eval()
    with torch.no_grad():
        model.presence.classify.weight.zero_()
        model.presence.classify.bias.fill_(LOGIT)
    meta = onnx_io.read_metadata(zoo.models / "onnx" / "pruned.onnx") | {"model": CONFIG}
    path = tmp_path_factory.mktemp("presence") / "net.onnx"
    onnx_io.export(model, path, shipped("export"), meta)
    return path


def deployable(network, tmp_path, rule: PostProcess = PostProcess(), **presence) -> Segmenter:
    path = tmp_path / "deployed.onnx"
    onnx_io.write_with_metadata(network, path, {"postprocess": rule.to_dict(), "presence": presence})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no out-of-distribution check")
        return Segmenter(path)


@pytest.fixture(scope="module")
def image():
    return speckle_image(np.random.default_rng(5), 57, 71)


@pytest.mark.parametrize("temperature", [0.5, 4.0])
def test_score_is_the_calibrated_presence_probability(network, tmp_path, image, temperature):
    seg = deployable(network, tmp_path, temperature=temperature, threshold=0.7)
    result = seg.segment(image)
    assert result.score == pytest.approx(sigmoid(LOGIT / temperature), abs=1e-5)
    assert seg.operating_point == 0.7
    assert result.lesion_present == (result.score >= 0.7) == (temperature == 0.5)  # 0.982 yes, 0.622 no


def test_no_lesion_answer_means_an_empty_mask(network, tmp_path, image):
    seg = deployable(network, tmp_path, PostProcess(threshold=0.0), temperature=1.0, threshold=0.9)
    result = seg.segment(image)
    assert not result.lesion_present and not result.mask.any() and result.area_px == 0 and result.bbox is None
    assert (result.probability > 0).all()  # the rule alone would have drawn every pixel


def test_lesion_answer_draws_the_rule_or_the_region_around_the_peak(network, tmp_path, image):
    nothing = PostProcess(threshold=0.999)
    plain = deployable(network, tmp_path, nothing, temperature=1.0, threshold=0.5, fill_empty=False).segment(image)
    assert plain.lesion_present and not plain.mask.any()  # the answer stands; the rule finds no pixel
    filled = deployable(network, tmp_path, nothing, temperature=1.0, threshold=0.5, fill_empty=True).segment(image)
    assert filled.lesion_present and filled.mask.any()
    np.testing.assert_array_equal(filled.mask, PostProcess.around_peak(filled.probability))
    assert filled.probability[filled.mask].min() >= 0.5 * filled.probability.max()
    drawn = deployable(network, tmp_path, PostProcess(threshold=0.0), temperature=1.0, threshold=0.5,
                       fill_empty=True).segment(image)
    assert drawn.mask.all()  # a rule that draws is not replaced


def test_older_files_fall_back_to_the_highest_probability_and_warn_once(zoo, image):
    path = zoo.models / "deploy" / "ultraseg.int8.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = Segmenter(path, postprocess=PostProcess(threshold=0.3, gate=0.4))
        results = [seg.segment(image) for _ in range(3)]
    presence_warnings = [w for w in caught if "no presence output" in str(w.message)]
    assert len(presence_warnings) == 1 and str(path) in str(presence_warnings[0].message)
    assert seg.presence is None and seg.operating_point == 0.4
    prob = results[0].probability
    assert results[0].score == pytest.approx(float(prob.max()))
    assert results[0].lesion_present == bool(PostProcess(threshold=0.3, gate=0.4).apply(prob).any())


@pytest.mark.parametrize("bad", [{"temperature": 0.0, "threshold": 0.5}, {"threshold": 0.5},
                                 {"temperature": 1.0, "threshold": 0.5, "margin": 1}])
def test_bad_presence_metadata_names_the_file(network, tmp_path, bad):
    with pytest.raises(DataError, match=r"deployed\.onnx.*presence"):
        deployable(network, tmp_path, **bad)


ODD = {
    "1x1": np.full((1, 1), 80, np.uint8),
    "constant": np.full((40, 50), 120, np.uint8),
    "all_nan": np.full((40, 50), np.nan, np.float32),
}


@pytest.mark.parametrize("name", ODD)
def test_frames_without_a_scan_get_no_answer_with_a_reason(network, tmp_path, name):
    seg = deployable(network, tmp_path, PostProcess(threshold=0.0), temperature=1.0, threshold=0.5)
    frame = ODD[name]
    for result in (seg.segment(frame), *seg.stream([frame, frame])):
        assert not result.in_distribution and result.ood_reason
        assert not result.lesion_present and not result.mask.any() and result.mask.shape == frame.shape[:2]


@pytest.mark.parametrize("kind", ["uint16", "rgba"])
def test_sixteen_bit_and_rgba_frames_get_the_presence_answer(network, tmp_path, image, kind):
    seg = deployable(network, tmp_path, temperature=1.0, threshold=0.5)
    frame = image.astype(np.uint16) * 257 if kind == "uint16" else np.dstack([image] * 3 + [np.full_like(image, 255)])
    result, grey = seg.segment(frame), seg.segment(image)
    assert result.score == pytest.approx(sigmoid(LOGIT), abs=1e-5) and result.lesion_present
    np.testing.assert_allclose(result.probability, grey.probability, atol=1e-5)


def test_stream_compares_the_smoothed_score_with_the_presence_threshold(network, tmp_path, image):
    # sigmoid(2 / T): T=1 -> 0.881, T=4 -> 0.622; the threshold between them decides
    for temperature, expected in ((1.0, True), (4.0, False)):
        seg = deployable(network, tmp_path, PostProcess(threshold=0.0), temperature=temperature, threshold=0.75)
        seg.stream_rule = StreamParams("ema", 3, 0.5)
        assert seg.smoother().operating_point == 0.75
        results = list(seg.stream([image] * 3))
        assert [r.lesion_present for r in results] == [expected] * 3
        assert all(r.mask.all() == expected for r in results)


def test_presence_probability_has_no_overflow():
    rule = Presence(temperature=0.05, threshold=0.5)
    assert rule.probability(1e4) == 1.0 and rule.probability(-1e4) == 0.0
    assert rule.probability(0.0) == 0.5


def test_a_given_presence_answer_replaces_the_stored_one(network, zoo, image):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning: the answer is given
        warnings.filterwarnings("ignore", message=".*no out-of-distribution check")
        seg = Segmenter(network, presence=Presence(temperature=4.0, threshold=0.6))
    result = seg.segment(image)
    assert seg.operating_point == 0.6 and result.score == pytest.approx(sigmoid(LOGIT / 4.0), abs=1e-5)
    assert result.lesion_present  # 0.622 >= 0.6
    with pytest.raises(DataError, match=r"pruned\.int8\.onnx.*no 'presence' output"):
        Segmenter(zoo.models / "pruned.int8.onnx", presence=Presence(temperature=1.0, threshold=0.5))
