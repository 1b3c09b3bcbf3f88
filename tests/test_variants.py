"""variants.py: one list of every model variant, file names that agree with the stages that write them, and predictors
whose runtimes agree on the same network."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from ultraseg.data.dataset import Preprocessed
from ultraseg.runtime.model_files import (DEPLOYABLE_NETWORK, INT8_FILE, INT8_VARIANT, NETWORKS, Outputs,
                                          checkpoint_file, onnx_file, onnx_predictor)
from ultraseg.runtime.preprocess import normalize
from ultraseg.variants import VARIANTS, by_name, predictor, probabilities

EXPECTED = [
    ("teacher", "teacher", "torch", "fp32", "teacher.pt"),
    ("teacher_onnx", "teacher", "onnxruntime", "fp32", "onnx/teacher.onnx"),
    ("student", "student", "torch", "fp32", "student.pt"),
    ("student_onnx", "student", "onnxruntime", "fp32", "onnx/student.onnx"),
    ("pruned", "pruned", "torch", "fp32", "pruned.pt"),
    ("pruned_onnx", "pruned", "onnxruntime", "fp32", "onnx/pruned.onnx"),
    ("pruned_int8", "pruned", "onnxruntime", "int8", "pruned.int8.onnx"),
]


def test_variants_in_pipeline_order_with_their_files():
    assert [(v.name, v.network, v.runtime, v.precision, v.file) for v in VARIANTS] == EXPECTED
    assert NETWORKS == ("teacher", "student", "pruned")
    # every network appears in NETWORKS' order, each first as its PyTorch checkpoint, then as its ONNX file
    assert list(dict.fromkeys(v.network for v in VARIANTS)) == list(NETWORKS)
    for network in NETWORKS:
        assert by_name(network).file == checkpoint_file(network)
        assert by_name(f"{network}_onnx").file == onnx_file(network)
    assert by_name(INT8_VARIANT).file == INT8_FILE
    assert by_name(INT8_VARIANT).network == DEPLOYABLE_NETWORK


def test_variant_names_and_files_are_unique():
    assert len({v.name for v in VARIANTS}) == len({v.file for v in VARIANTS}) == len(VARIANTS)


def test_labels_name_network_runtime_and_precision():
    assert by_name("teacher").label == "teacher (PyTorch fp32)"
    assert by_name("student_onnx").label == "student (ORT fp32)"
    assert by_name("pruned_int8").label == "pruned (ORT int8)"


def test_by_name_returns_the_variant():
    for variant in VARIANTS:
        assert by_name(variant.name) is variant


def test_by_name_names_the_unknown_variant_and_the_known_ones():
    with pytest.raises(KeyError) as err:
        by_name("tiny_int4")
    message = str(err.value)
    assert "'tiny_int4'" in message
    for variant in VARIANTS:
        assert variant.name in message


@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_predictor_of_a_missing_file_names_it(tmp_path, name):
    variant = by_name(name)
    with pytest.raises(FileNotFoundError) as err:
        predictor(variant, tmp_path)
    assert str(tmp_path / variant.file) in str(err.value)
    assert repr(name) in str(err.value)


def test_predictor_refuses_a_missing_file_even_when_others_exist(zoo, tmp_path):
    (tmp_path / "teacher.pt").write_bytes((zoo.models / "teacher.pt").read_bytes())
    predictor(by_name("teacher"), tmp_path)  # present: loads
    with pytest.raises(FileNotFoundError, match="student.pt"):
        predictor(by_name("student"), tmp_path)


def zoo_images(zoo) -> np.ndarray:
    """Every preprocessed image of the zoo, z-scored: (N, S, S) float32."""
    return normalize(Preprocessed.load(zoo.data).images, "zscore")


@pytest.mark.parametrize("network", NETWORKS)
def test_torch_and_onnx_predictors_agree(zoo, network):
    images = zoo_images(zoo)[:4, None]
    torch_logits, torch_presence = predictor(by_name(network), zoo.models, threads=1)(images)
    onnx_logits, onnx_presence = predictor(by_name(f"{network}_onnx"), zoo.models, threads=1)(images)
    assert torch_presence is None and onnx_presence is None  # the zoo's networks have no presence head
    assert torch_logits.shape == onnx_logits.shape == (4, 1, zoo.size, zoo.size)
    assert torch_logits.dtype == onnx_logits.dtype == np.float32
    np.testing.assert_allclose(onnx_logits, torch_logits, rtol=1e-3, atol=1e-4)


def test_networks_differ(zoo):
    """The agreement above is not trivial: different networks give different logits on the same images."""
    images = zoo_images(zoo)[:2, None]
    teacher = predictor(by_name("teacher"), zoo.models, threads=1)(images).logits
    student = predictor(by_name("student"), zoo.models, threads=1)(images).logits
    assert np.abs(teacher - student).max() > 1e-3


def test_int8_predictor_is_close_to_its_fp32_source(zoo):
    images = zoo_images(zoo)[:4, None]
    fp32 = predictor(by_name("pruned_onnx"), zoo.models, threads=1)(images).logits
    int8 = predictor(by_name(INT8_VARIANT), zoo.models, threads=1)(images).logits
    assert int8.shape == fp32.shape and np.isfinite(int8).all()
    # quantised, so not equal, but close on the scale of the logits
    assert np.abs(int8 - fp32).max() < 0.25 * (np.abs(fp32).max() + 1e-6) + 0.05


def test_onnx_predictor_accepts_float64_and_non_contiguous_input(zoo):
    images = zoo_images(zoo)[:3]
    predict = onnx_predictor(zoo.models / onnx_file("student"), threads=1)
    want = predict(np.ascontiguousarray(images[:, None])).logits
    odd = np.asfortranarray(images.astype(np.float64))[:, None]
    np.testing.assert_allclose(predict(odd).logits, want, rtol=1e-5, atol=1e-6)


class Recording:
    """Wraps a predictor and records the batch sizes it is called with."""

    def __init__(self, predict):
        self.predict, self.batches = predict, []

    def __call__(self, images: np.ndarray) -> Outputs:
        assert images.ndim == 4 and images.shape[1] == 1
        self.batches.append(len(images))
        return self.predict(images)


def test_probabilities_are_the_same_in_any_batch_size(zoo):
    images = zoo_images(zoo)
    n = len(images)
    assert n > 1
    predict = predictor(by_name("student"), zoo.models, threads=1)
    ones, sixteen = Recording(predict), Recording(predict)
    p1, presence = probabilities(ones, images, batch_size=1)
    p16, _ = probabilities(sixteen, images, batch_size=16)
    assert presence is None
    assert ones.batches == [1] * n
    assert sixteen.batches == [16] * (n // 16) + ([n % 16] if n % 16 else [])
    assert p1.shape == p16.shape == images.shape and p1.dtype == np.float32
    np.testing.assert_allclose(p1, p16, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p16, expit(predict(images[:, None]).logits[:, 0]), rtol=1e-5, atol=1e-6)
    assert ((p16 >= 0) & (p16 <= 1)).all()


def test_probabilities_cover_every_image_in_order():
    """A batch size that does not divide N: the last, short batch is included, and images stay in order."""
    images = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    calls = Recording(lambda x: Outputs(x - 4.5, x[:, 0, 0, 0] * 2))
    probs, presence = probabilities(calls, images, batch_size=3)
    assert calls.batches == [3, 3, 3, 1]
    assert probs.shape == (10, 2, 3)
    np.testing.assert_allclose(probs[:, 0, 0], expit(np.arange(10) - 4.5), rtol=1e-6)
    np.testing.assert_array_equal(presence, np.arange(10) * 2)  # raw logits, in order, not squashed
