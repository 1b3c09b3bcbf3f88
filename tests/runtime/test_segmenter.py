"""The torch-free runtime: metadata-driven preprocessing, any input kind, results at the input's resolution."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from PIL import Image

from tests.conftest import speckle_image
from ultraseg.errors import DataError
from ultraseg.runtime import Segmenter, segmenter, to_grey
from ultraseg.runtime.model_files import onnx_predictor
from ultraseg.runtime.postprocess import PostProcess
from ultraseg.runtime.preprocess import normalize, preprocess, resize_probabilities


@pytest.fixture(scope="module")
def model(zoo):
    return zoo.models / "pruned.int8.onnx"


@pytest.fixture(scope="module")
def image():
    return speckle_image(np.random.default_rng(3), 61, 83)


def test_docstring_example_runs(model):
    result = doctest.testmod(segmenter, extraglobs={"MODEL": str(model)}, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0


def test_probability_equals_the_pipeline_steps(model, image):
    """The runtime does exactly what the preprocess stage and evaluation do with the same file."""
    seg = Segmenter(model)
    prob, timings = seg.probability(image)
    x = normalize(preprocess(image, seg.preprocess_params), seg.normalize)[None, None]
    logits = onnx_predictor(model, threads=1)(x).logits[0, 0]
    expected = resize_probabilities(1 / (1 + np.exp(-logits)), image.shape)
    np.testing.assert_allclose(prob, expected, rtol=0, atol=1e-6)
    assert set(timings) == {"preprocess_ms", "model_ms"}


def test_result_describes_the_mask(model, image):
    seg = Segmenter(model, postprocess=PostProcess(threshold=0.2))
    prob, _ = seg.probability(image)
    threshold = float(np.quantile(prob, 0.8))  # some pixels, whatever the untrained model predicts
    result = seg.segment(image, pixel_spacing=(0.2, 0.5), threshold=threshold)
    assert result.mask.shape == image.shape and result.mask.dtype == bool
    np.testing.assert_array_equal(result.mask, prob > threshold)
    assert result.lesion_present and result.area_px == int(result.mask.sum())
    assert result.area_mm2 == pytest.approx(result.area_px * 0.1)
    x, y, w, h = result.bbox
    ys, xs = np.nonzero(result.mask)
    assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
    assert result.contour.ndim == 2 and result.contour.shape[1] == 2
    assert result.mask[result.contour[:, 1], result.contour[:, 0]].all()  # in image coordinates, on the lesion
    assert result.score == pytest.approx(float(prob.max()))
    assert seg.segment(image).mask.sum() == (prob > 0.2).sum()  # the file's rule was replaced by the given one


def test_no_lesion_gives_empty_descriptions(model, image):
    result = Segmenter(model, postprocess=PostProcess(threshold=0.999999)).segment(image)
    assert not result.lesion_present and result.area_px == 0
    assert result.bbox is None and result.contour is None and result.area_mm2 is None


@pytest.mark.parametrize("kind", ["rgb", "rgba", "uint16", "channel", "float"])
def test_every_input_kind_gives_the_greyscale_answer(model, image, kind):
    grey = Segmenter(model).segment(image)
    rgb = np.dstack([image] * 3)
    array = {"rgb": rgb, "rgba": np.dstack([rgb, np.full_like(image, 7)]), "uint16": image.astype(np.uint16) * 257,
             "channel": image[..., None], "float": image.astype(np.float32)}[kind]
    other = Segmenter(model).segment(array)
    np.testing.assert_array_equal(other.probability, grey.probability)


def test_colour_conversion_matches_pil(image):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_grey(rgb), np.asarray(Image.fromarray(rgb, "RGB").convert("L")))


def test_batch_and_stream_agree_with_single_calls(model, image):
    seg = Segmenter(model)
    frames = [image, image[:40], np.fliplr(image)]
    single = [seg.segment(f).probability for f in frames]
    for results in (seg.segment_batch(frames), list(seg.stream(iter(frames)))):
        assert len(results) == 3
        for result, expected in zip(results, single):
            np.testing.assert_array_equal(result.probability, expected)


def test_bad_models_and_images_are_named(tmp_path, zoo, image):
    with pytest.raises(DataError, match="nope.onnx: model file not found"):
        Segmenter(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.onnx: not a loadable ONNX model"):
        Segmenter(junk)
    bare = tmp_path / "bare.onnx"
    import onnx

    proto = onnx.load(str(zoo.models / "onnx" / "pruned.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    with pytest.raises(DataError, match="bare.onnx: not an ultraseg model: its metadata lacks preprocess, size"):
        Segmenter(bare)
    with pytest.raises(DataError, match="shape"):
        Segmenter(zoo.models / "pruned.int8.onnx").segment(np.zeros((4, 4, 5)))


def test_flip_averages_the_model_over_the_mirrored_input(model, image):
    seg = Segmenter(model, flip=True)
    assert seg.flip and not Segmenter(model).flip
    x = normalize(preprocess(image, seg.preprocess_params), seg.normalize)[None, None]
    predict = onnx_predictor(model, threads=1)
    sigmoid = [1 / (1 + np.exp(-predict(np.ascontiguousarray(v)).logits[0, 0])) for v in (x, x[..., ::-1])]
    expected = resize_probabilities(0.5 * (sigmoid[0] + sigmoid[1][:, ::-1]), image.shape)
    np.testing.assert_allclose(seg.probability(image)[0], expected, rtol=0, atol=1e-6)
    assert not np.allclose(expected, Segmenter(model).probability(image)[0], rtol=0, atol=1e-6)


def test_describe_finds_the_largest_lesions_outline_where_it_lies():
    mask = np.zeros((90, 120), bool)
    mask[10:14, 5:9] = True      # a small lesion
    mask[40:70, 60:100] = True   # the largest, away from the origin
    result = segmenter.describe(mask, mask.astype(np.float32), pixel_spacing=(0.1, 0.1))
    assert result.area_px == 16 + 1200 and result.bbox == (5, 10, 95, 60)
    xs, ys = result.contour[:, 0], result.contour[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (60, 99, 40, 69)
