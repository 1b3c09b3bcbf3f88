"""Static int8 quantisation: agreement with fp32 on a trained tiny model, metadata, the float-op report, params."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from ultraseg import onnx_io
from ultraseg.data.busi import read_image
from ultraseg.runtime.model_files import onnx_predictor
from ultraseg.runtime.preprocess import normalize, preprocess
from ultraseg.losses import build_loss
from ultraseg.metrics import confusion, dice
from ultraseg.models import build_model, split_outputs
from ultraseg.timing import latency
from ultraseg.quantization import CalibrationReader, presence_nodes, quantize
from tests.conftest import shipped

CONFIG = {"name": "unet", "widths": [8, 16, 32], "up": "bilinear"}
METADATA = {"kind": "student", "size": 48, "threshold": 0.5, "normalize": "zscore", "model": CONFIG}
AGREEMENT = 0.9
"""Lowest Dice between the thresholded fp32 and int8 predictions of one image (both non-empty)."""


def discs(n: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark speckled discs on brighter speckled tissue, as uint8 scans, z-scored like the pipeline; and masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((n, height, width), np.uint8)
    for k in range(n):
        r = rng.uniform(0.15, 0.3) * min(height, width)
        cy, cx = rng.uniform(r + 2, height - r - 2), rng.uniform(r + 2, width - r - 2)
        masks[k] = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    tissue = np.where(masks == 1, 50.0, 150.0) * rng.gamma(8.0, 1 / 8.0, masks.shape)
    return normalize(np.clip(tissue, 0, 255).astype(np.uint8), "zscore"), masks


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """A tiny U-Net trained on discs for a few seconds, exported: (model, path)."""
    torch.manual_seed(0)
    model = build_model(CONFIG)
    images, masks = discs(32, 48, 48, seed=0)
    x, y = torch.from_numpy(images[:, None]), torch.from_numpy(masks[:, None]).float()
    loss_fn = build_loss({"bce": 1.0, "dice": 1.0})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(60):
        batch = slice(8 * (step % 4), 8 * (step % 4) + 8)
        optimizer.zero_grad()
        loss_fn(model(x[batch]), y[batch]).backward()
        optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("fp32") / "model.onnx"
    onnx_io.export(model, path, shipped("export"), METADATA)
    return model, path


@pytest.fixture(scope="module")
def calibration():
    return discs(8, 48, 48, seed=1)[0]


@pytest.fixture(scope="module")
def int8(fp32, calibration, tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    return path, quantize(fp32[1], path, calibration, shipped("quantize", min_channels=0))


def predict(path, images: np.ndarray) -> np.ndarray:
    logits = onnx_io.session(path, threads=1).run(["logits"], {"input": images[:, None]})[0]
    return logits[:, 0] > 0  # probability 0.5


def test_int8_agrees_with_fp32_at_another_size(fp32, int8):
    images, masks = discs(6, 40, 56, seed=2)  # not the calibration size, width not a multiple of 16
    logits = onnx_io.session(int8[0]).run(["logits"], {"input": images[:, None]})[0]
    assert logits.shape == (6, 1, 40, 56) and logits.dtype == np.float32
    reference, quantized = predict(fp32[1], images), predict(int8[0], images)
    truth = dice(*confusion(reference, masks))
    assert truth.min() > 0.8, f"the fixture model did not learn the discs: Dice {truth}"
    agreement = dice(*confusion(quantized, reference))
    assert agreement.min() >= AGREEMENT, f"int8 vs fp32 Dice per image: {agreement}"


def test_metadata_copied_and_quantization_recorded(fp32, int8):
    meta = onnx_io.read_metadata(int8[0])
    assert {k: meta[k] for k in METADATA} == METADATA
    q = meta["quantization"]
    assert (q["format"], q["method"], q["per_channel"], q["calibration_images"]) == ("qdq", "minmax", True, 8)
    assert q["activation_type"] == "uint8" and q["weight_type"] == "int8"


def test_report(fp32, int8):
    path, report = int8
    assert report["fp32_bytes"] == fp32[1].stat().st_size
    assert report["int8_bytes"] == path.stat().st_size < report["fp32_bytes"]
    assert report["calibration_images"] == 8 and report["calibration_seconds"] > 0
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(fp32[1])).graph.node)
    # QDQ on ORT's CPU provider: every Conv becomes a QLinearConv; linear Resize and Pad stay float between a DQ
    # and a Q although they sit in the DQ-op-Q pattern (ORT has no fusion for them)
    assert report["int8_ops"]["QLinearConv"] == convs
    assert report["float_ops"] == {"Pad": 2, "Resize": 2}
    assert report["conversions"]["QuantizeLinear"] >= 1 + 2 * 2  # the input, and back after each Resize and Pad


def test_excluded_op_type_is_reported_float(fp32, calibration, tmp_path):
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(fp32[1])).graph.node)
    report = quantize(fp32[1], tmp_path / "q.onnx", calibration,
                      shipped("quantize", min_channels=0, exclude_op_types="Conv, Resize"))
    assert report["float_ops"]["Conv"] == convs
    assert "QLinearConv" not in report["int8_ops"] and report["excluded_but_int8"] == []


def test_excluded_nodes_float_or_requantized_by_ort(fp32, calibration, tmp_path):
    stem, second = [n.name for n in onnx.load(str(fp32[1])).graph.node if n.op_type == "Conv"][:2]
    params = shipped("quantize", min_channels=0, exclude_nodes=stem)
    report = quantize(fp32[1], tmp_path / "q.onnx", calibration, params)
    assert report["float_ops"]["Conv"] == 1 and report["excluded_but_int8"] == []
    # the second Conv reads a DequantizeLinear and feeds a QuantizeLinear: ORT quantises its weights on load
    with pytest.warns(UserWarning, match="WeightBiasQuantization"):
        report = quantize(fp32[1], tmp_path / "q.onnx", calibration,
                          shipped("quantize", min_channels=0, exclude_nodes=second))
    assert "Conv" not in report["float_ops"] and report["excluded_but_int8"] == [second]


def test_narrow_convs_stay_float(fp32, calibration, tmp_path):
    weights = {init.name: init.dims for init in onnx.load(str(fp32[1])).graph.initializer}
    outs = [weights[n.input[1]][0] for n in onnx.load(str(fp32[1])).graph.node if n.op_type == "Conv"]
    narrow = sum(c < 16 for c in outs)
    assert 0 < narrow < len(outs)  # the fixture has 8- and 1-channel convs and wider ones
    report = quantize(fp32[1], tmp_path / "q.onnx", calibration, shipped("quantize", min_channels=16))
    assert report["narrow_convs_float"] == narrow and report["excluded_but_int8"] == []
    assert report["float_ops"]["Conv"] == narrow and report["int8_ops"]["QLinearConv"] == len(outs) - narrow


def test_qoperator_runs_pad_and_resize_in_uint8(fp32, calibration, tmp_path):
    path = tmp_path / "q.onnx"
    params = shipped("quantize", min_channels=0, format="qoperator", per_channel=False)
    report = quantize(fp32[1], path, calibration, params)
    assert report["float_ops"] == {}
    assert report["conversions"] == {"DequantizeLinear": 1, "QuantizeLinear": 1}
    images = discs(3, 48, 48, seed=3)[0]
    assert dice(*confusion(predict(path, images), predict(fp32[1], images))).min() >= AGREEMENT


def test_unknown_node_name_fails_and_writes_nothing(fp32, calibration, tmp_path):
    path = tmp_path / "q.onnx"
    with pytest.raises(ValueError, match=r"quantize\.exclude_nodes: no node 'nope'"):
        quantize(fp32[1], path, calibration, shipped("quantize", min_channels=0, exclude_nodes="nope"))
    assert list(tmp_path.iterdir()) == []


def test_calibration_reader():
    images = np.zeros((3, 20, 24), np.float32)
    reader = CalibrationReader(images)
    feeds = list(iter(reader.get_next, None))
    assert len(feeds) == 3 and all(f["input"].shape == (1, 1, 20, 24) for f in feeds)
    reader.rewind()
    assert reader.get_next()["input"].dtype == np.float32
    with pytest.raises(ValueError, match="normalised float32"):
        CalibrationReader(images.astype(np.uint8))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        CalibrationReader(images[:, None])


def test_latency_helper(int8):
    result = latency(int8[0], shape=(1, 1, 32, 32), warmup=1, runs=5)
    assert 0 < result["min_ms"] <= result["p50_ms"] <= result["p95_ms"]
    assert result["runs"] == 5 and result["threads"] == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"calibration_images": 0}, "quantize.calibration_images"),
        ({"method": "kl"}, "quantize.method"),
        ({"format": "qlinear"}, "quantize.format"),
        ({"activation_type": "int16"}, "quantize.activation_type"),
        ({"activation_type": "int8", "weight_type": "uint8"}, "quantize.weight_type: ONNX Runtime has no kernels"),
        ({"min_channels": -1}, "quantize.min_channels"),
        ({"exclude_op_types": "Conv;Resize"}, "quantize.exclude_op_types: expected comma-separated op type names, got 'Conv;Resize'"),
    ],
)
def test_validate_names_the_key(changes, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        dataclasses.replace(shipped("quantize"), **changes).validate("quantize")


def test_exclusion_lists_parse_with_spaces_and_trailing_commas():
    params = shipped("quantize", exclude_op_types=" ConvTranspose , Resize,", exclude_nodes="")
    params.validate("quantize")
    assert params.excluded_op_types() == ["ConvTranspose", "Resize"] and params.excluded_nodes() == []


def test_stem_stride_student_runs_every_conv_in_int8(calibration, tmp_path):
    """The shipped student's layout (1/4 resolution, >= 16 channels everywhere) leaves no convolution of the
    segmentation path float; its presence head stays float by design."""
    torch.manual_seed(0)
    config = shipped("distill.student", widths=[16, 32]).config()
    fp32_path, int8_path = tmp_path / "s.onnx", tmp_path / "s.int8.onnx"
    onnx_io.export(build_model(config).eval(), fp32_path, shipped("export"), METADATA | {"model": config})
    report = quantize(fp32_path, int8_path, calibration, shipped("quantize", min_channels=16))
    graph = onnx.load(str(fp32_path)).graph
    head = set(presence_nodes(graph))
    assert bool(head) == bool(config.get("presence"))
    ops = [n.op_type for n in graph.node if n.name not in head]
    head_compute = Counter(n.op_type for n in graph.node if n.name in head and n.op_type in {"Conv", "Relu", "Gemm", "Concat"})
    assert report["narrow_convs_float"] == 0 and report["presence_nodes_float"] == len(head)
    # padding the up-sampled map to its skip, and the logits to the input; ONNX Runtime has no int8 instance norm
    float_ops = Counter(report["float_ops"]) - head_compute
    assert dict(float_ops) == {"Pad": 2, "InstanceNormalization": ops.count("InstanceNormalization")}
    assert ops.count("InstanceNormalization") > 0
    assert report["int8_ops"]["QLinearConv"] == ops.count("Conv")
    images = discs(2, 41, 57, seed=3)[0]  # sides that are not multiples of the stride: the output is padded back
    assert onnx_io.session(int8_path).run(["logits"], {"input": images[:, None]})[0].shape == (2, 1, 41, 57)


# ---------------------------------------------------------------------------------------------------- presence

PRESENCE_CONFIG = CONFIG | {"presence": True}
PRESENCE_SPREAD = 0.25
"""Largest |int8 - fp32| presence logit of one image, as a share of the fp32 logits' spread (max - min) over the
images. Int8 keeps the presence head float (see ultraseg.quantization) but not the bottleneck features it reads,
so each logit moves by a share of the image-to-image differences; a quarter leaves the images' order nearly whole,
and the deploy stage fits the temperature and operating point on the int8 file's own logits."""


def mirror_scans(busi_mirror, cls: str, numbers: range) -> np.ndarray:
    params = shipped("preprocess")  # the shipped side: the mirror's scans are enhanced at their own resolution
    return np.stack([normalize(preprocess(read_image(busi_mirror / cls / f"{cls} ({k}).webp"), params), "zscore")
                     for k in numbers])


def test_presence_agrees_between_torch_fp32_onnx_and_int8(busi_mirror, tmp_path):
    """Real scans: a tiny presence network trained a few steps on lesion vs normal scans, exported and quantised;
    the presence logit of unseen scans agrees between the three."""
    train = np.concatenate([mirror_scans(busi_mirror, c, range(1, 9)) for c in ("benign", "malignant", "normal")])
    labels = torch.tensor([1.0] * 16 + [0.0] * 8)[:, None]
    unseen = np.concatenate([mirror_scans(busi_mirror, c, range(20, 26)) for c in ("benign", "normal")])
    torch.manual_seed(0)
    model = build_model(PRESENCE_CONFIG)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    for _ in range(25):
        optimizer.zero_grad()
        presence = split_outputs(model(torch.from_numpy(train[:, None])))[1]
        torch.nn.functional.binary_cross_entropy_with_logits(presence, labels).backward()
        optimizer.step()
    model.eval()
    fp32_path, int8_path = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    onnx_io.export(model, fp32_path, shipped("export"), METADATA | {"model": PRESENCE_CONFIG})
    report = quantize(fp32_path, int8_path, train, shipped("quantize", min_channels=0))
    assert report["presence_nodes_float"] > 0 and report["int8_ops"]  # the head float, the rest int8
    with torch.no_grad():
        want = split_outputs(model(torch.from_numpy(unseen[:, None])))[1][:, 0].numpy()
    fp32 = onnx_predictor(fp32_path, threads=1)(unseen[:, None])
    int8 = onnx_predictor(int8_path, threads=1)(unseen[:, None])
    assert fp32.presence.shape == int8.presence.shape == (12,)
    np.testing.assert_allclose(fp32.presence, want, rtol=shipped("export").rtol, atol=shipped("export").atol)
    spread = float(np.ptp(fp32.presence))
    assert spread > 0.1  # trained: the images differ, so the tolerance below is not vacuous
    assert np.abs(int8.presence - fp32.presence).max() <= PRESENCE_SPREAD * spread
