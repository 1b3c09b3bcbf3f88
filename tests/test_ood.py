"""The out-of-distribution check's training side: the features output added to a trained graph, and the Gaussian
fitted over the train scans with its threshold on val."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ultraseg import ood, ood_frames, onnx_io
from ultraseg.runtime import Segmenter
from ultraseg.runtime.model_files import INPUT, OUTPUT, session
from ultraseg.runtime.ood import FEATURES, STATS, STATS_VERSION


def test_features_output_keeps_the_logits_of_the_int8_file(zoo, tmp_path):
    src, out = zoo.models / "pruned.int8.onnx", tmp_path / "features.onnx"
    ood.write_with_features(src, out)
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 48)).astype(np.float32)
    before = session(src).run(None, {INPUT: x})
    after = session(out).run(None, {INPUT: x})
    assert len(before) == 1 and [o.name for o in session(out).get_outputs()] == [OUTPUT, FEATURES]
    np.testing.assert_array_equal(after[0], before[0])
    upsampled = 4  # the zoo network's 1x1 convolution before its nearest upsampling: mean, std and max of each
    assert after[1].shape == (2, 3 * upsampled) and np.isfinite(after[1]).all()
    assert onnx_io.read_metadata(out) == onnx_io.read_metadata(src)
    again = ood.add_features(onnx.load(str(out)))
    assert [o.name for o in again.graph.output] == [OUTPUT, FEATURES]


def tiny_graph(ops: list[str], opset: int = 18) -> onnx.ModelProto:
    """input -> each op in turn (InstanceNormalization, Relu, Resize) -> logits."""
    nodes, inits, x = [], [numpy_helper.from_array(np.ones(2, np.float32), "one"),
                           numpy_helper.from_array(np.zeros(2, np.float32), "zero"),
                           numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")], INPUT
    for k, op in enumerate(ops):
        inputs = {"InstanceNormalization": [x, "one", "zero"], "Resize": [x, "", "scales"]}.get(op, [x])
        y = OUTPUT if k == len(ops) - 1 else f"t{k}"
        nodes.append(helper.make_node(op, inputs, [y], name=f"n{k}"))
        x = y
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 2, None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_taps_are_the_last_instance_norm_input_and_the_first_upsampling_input():
    graph = tiny_graph(["Relu", "InstanceNormalization", "Relu", "InstanceNormalization", "Relu", "Resize",
                        "InstanceNormalization"]).graph
    assert ood.feature_taps(graph) == ("t2", "t4")
    assert ood.feature_taps(tiny_graph(["Relu", "Resize"]).graph) == ("t0", "t0")


@pytest.mark.parametrize("opset", [17, 18])
def test_pooled_features_are_mean_std_and_max(opset, tmp_path):
    proto = ood.add_features(tiny_graph(["Relu", "InstanceNormalization", "Relu", "Resize"], opset))
    onnx.save(proto, str(tmp_path / "g.onnx"))
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    features = session(tmp_path / "g.onnx").run([FEATURES], {INPUT: x})[0][0]
    relu = np.maximum(x[0], 0)
    normed = (relu - relu.mean(axis=(1, 2), keepdims=True)) / np.sqrt(relu.var(axis=(1, 2), keepdims=True) + 1e-5)
    expected = np.concatenate([relu.mean(axis=(1, 2)), relu.std(axis=(1, 2)), np.maximum(normed, 0).max(axis=(1, 2))])
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_a_graph_without_upsampling_is_refused():
    with pytest.raises(ValueError, match="no Resize or ConvTranspose node"):
        ood.add_features(tiny_graph(["Relu", "InstanceNormalization"]))


@pytest.mark.parametrize("val_pass", [0.5, 0.9, 1.0])
def test_threshold_is_the_smallest_that_lets_val_pass(val_pass):
    rng = np.random.default_rng(0)
    train, val = rng.standard_normal((200, 6)), rng.standard_normal((40, 6)) * 1.5
    meta = ood.fit(list(train), list(val), val_pass, 0.1, 32)
    check = ood.OodCheck.from_meta(meta)
    distances = np.array([check.distance(v) for v in val])
    assert np.mean(distances <= check.threshold) >= val_pass
    assert np.mean(distances < check.threshold) < val_pass  # any lower threshold lets too few pass
    assert check.min_side == 32 and len(meta["mean"]) == 6
    whitened = np.array([check.whiten @ (t - check.mean) for t in train])
    assert np.allclose(np.cov(whitened, rowvar=False), np.eye(6), atol=0.15)  # shrinkage: close to, not exactly, I


def test_frame_statistics_get_their_own_gaussian_and_the_threshold_covers_both():
    rng = np.random.default_rng(2)
    train, val = rng.standard_normal((300, 6)), rng.standard_normal((50, 6))
    stats_train = rng.standard_normal((300, 3)) * [1.0, 100.0, 0.01] + 5  # scales far apart: each is standardised
    stats_val = rng.standard_normal((50, 3)) * [1.0, 100.0, 0.01] * 2 + 5
    meta = ood.fit(list(train), list(val), 0.9, 0.1, 32, list(stats_train), list(stats_val))
    assert meta["frame_stats"]["version"] == STATS_VERSION and meta["frame_stats"]["names"] == list(STATS)
    check = ood.OodCheck.from_meta(meta)
    for block, x in ((check.stats, stats_train), (ood.Gaussian(check.mean, check.whiten, check.scale), train)):
        assert np.mean([block.squared(v) for v in x]) == pytest.approx(1.0)  # neither block outweighs the other
    distances = np.sqrt([check.stats.squared(s) + ood.Gaussian(check.mean, check.whiten, check.scale).squared(f)
                         for f, s in zip(val, stats_val)])
    assert np.mean(distances <= check.threshold) >= 0.9 > np.mean(distances < check.threshold)
    per_column = np.diag(check.stats.whiten @ np.cov(stats_train, rowvar=False) @ check.stats.whiten.T)
    assert np.allclose(per_column, 1.0, atol=0.1)  # the 100-fold column is no louder than the 0.01-fold one


def test_augmented_copies_are_scanner_shifted_and_repeatable():
    from tests.conftest import speckle_image

    scans = [speckle_image(np.random.default_rng(k), 60 + k, 80) for k in range(3)]
    copies = ood.augmented_copies(scans, 2, seed=7)
    assert len(copies) == 6 and all(c.dtype == np.uint8 for c in copies)
    assert [c.shape for c in copies] == [s.shape for s in scans] * 2
    assert sum(not np.array_equal(c, s) for c, s in zip(copies, scans * 2)) >= 5  # a mild JPEG may change little
    assert all(np.array_equal(a, b) for a, b in zip(copies, ood.augmented_copies(scans, 2, seed=7)))
    assert not all(np.array_equal(a, b) for a, b in zip(copies, ood.augmented_copies(scans, 2, seed=8)))
    assert ood.augmented_copies(scans, 0, seed=7) == []


def test_fit_needs_train_and_val_scans():
    with pytest.raises(ValueError, match="needs >= 2 train and >= 1 val scans, got 1 and 1"):
        ood.fit([np.zeros(3)], [np.zeros(3)], 0.99, 0.1, 32)


def mirror_scans(mirror) -> list[np.ndarray]:
    return [cv2.imread(str(mirror / cls / f"{cls} ({k}).webp"), cv2.IMREAD_GRAYSCALE)
            for cls, n in (("benign", 100), ("malignant", 60), ("normal", 60)) for k in range(1, n + 1)]


def test_the_flag_fires_on_the_built_set_and_not_on_mirror_scans(busi_mirror, tmp_path):
    """An untrained network with instance normalisation, as the pipeline's, fitted as the deploy stage fits (deep
    features and frame statistics of 70% of the mirror scans and one scanner-shifted copy of each, every one of 15% val
    passing): the held-out scans pass and the built set is flagged, every kind of it."""
    import torch

    from ultraseg.models import build_model
    from tests.conftest import shipped
    from ultraseg.params import to_dict
    from ultraseg.runtime.ood import frame_stats

    torch.manual_seed(0)
    model = build_model({"name": "unet", "widths": [8, 16], "norm": "instance", "up": "nearest"}).eval()
    meta = {"size": 64, "threshold": 0.5, "normalize": "zscore", "preprocess": to_dict(shipped("preprocess", size=64))}
    onnx_io.export(model, tmp_path / "fp32.onnx", shipped("export"), meta)
    ood.write_with_features(tmp_path / "fp32.onnx", tmp_path / "model.onnx")
    scans = mirror_scans(busi_mirror)
    order = np.random.default_rng(0).permutation(len(scans))
    n = len(scans)
    train, val, held = ([scans[i] for i in order[a:b]] for a, b in ((0, n * 7 // 10), (n * 7 // 10, n * 85 // 100),
                                                                     (n * 85 // 100, n)))
    train += ood.augmented_copies(train, 1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        features = Segmenter(tmp_path / "model.onnx").features
    fitted = ood.fit([features(s) for s in train], [features(s) for s in val], 1.0, 0.1, 32,
                     [frame_stats(s) for s in train], [frame_stats(s) for s in val])
    onnx_io.write_with_metadata(tmp_path / "model.onnx", tmp_path / "model.onnx", {"ood": fitted})
    segmenter = Segmenter(tmp_path / "model.onnx")
    held_flagged = np.mean([not segmenter.segment(s).in_distribution for s in held])
    built = ood_frames.build(0)
    flagged = ood_frames.flagged([not segmenter.segment(f.image).in_distribution for f in built],
                                 [f.kind for f in built])
    assert held_flagged <= 1 / len(held)
    assert {kind: v["flagged"] for kind, v in flagged["by_kind"].items()} == dict.fromkeys(ood_frames.KINDS, 1.0)
