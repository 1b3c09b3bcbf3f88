"""ONNX export: interface and dynamic sizes, opset, metadata, self-contained file, parity with PyTorch."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.external_data_helper import uses_external_data

from tests.conftest import TINY, shipped
from ultraseg import onnx_io
from ultraseg.models import build_model
from ultraseg.onnx_io import ParityError

VARIANTS = {
    "unet_transpose": {"name": "unet"},
    "attention_unet": {"name": "attention_unet"},
    "separable_bilinear": {"name": "unet", "block": "separable", "up": "bilinear"},
    "res_unet": {"name": "res_unet"},
    "stem_stride_nearest": {"name": "unet", "stem_stride": 2, "up": "nearest"},
    "unet_presence": {"name": "unet", "presence": True},
}
METADATA = {
    "kind": "student",
    "size": 48,
    "threshold": 0.5,
    "normalize": "zscore",
    "preprocess": {"size": 48, "filter": "none", "clahe": {"enabled": True, "clip": 2.0, "tiles": 8}},
    "params_hash": "0123456789ab",
}


def tiny(config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({"widths": TINY, **config})
    # non-trivial BatchNorm statistics, so folding them into the convolutions is exercised
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each variant exported once with the default (dynamo) exporter: name -> (model, path)."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, config in VARIANTS.items():
        model = tiny(config)
        path = folder / name / "model.onnx"
        onnx_io.export(model, path, shipped("export"), METADATA | {"model": {"widths": TINY, **config}})
        out[name] = (model, path)
    return out


@pytest.mark.parametrize("name", VARIANTS)
def test_exported_interface(exported, name):
    model, path = exported[name]
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    outputs = ["logits", "presence"] if VARIANTS[name].get("presence") else ["logits"]
    assert [o.name for o in proto.graph.output] == outputs
    if len(outputs) == 2:
        presence = proto.graph.output[1].type.tensor_type
        assert presence.elem_type == onnx.TensorProto.FLOAT
        assert [(d.dim_param, d.dim_value) for d in presence.shape.dim] == [("batch", 0), ("", 1)]
    for value in (proto.graph.input[0], proto.graph.output[0]):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
        assert dims[1].dim_value == 1
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", 18)}
    # self-contained: weights inline, nothing next to the file, no per-node debugging records
    assert not any(uses_external_data(t) for t in proto.graph.initializer)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    assert not any(node.metadata_props for node in proto.graph.node)
    weight_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert path.stat().st_size < 2 * weight_bytes + 40_000


@pytest.mark.parametrize("name", VARIANTS)
def test_metadata_round_trip(exported, name):
    assert onnx_io.read_metadata(exported[name][1]) == METADATA | {"model": {"widths": TINY, **VARIANTS[name]}}
    raw = {p.key: p.value for p in onnx.load(str(exported[name][1])).metadata_props}
    assert raw["normalize"] == '"zscore"' and raw["size"] == "48"  # every value JSON-encoded, strings included


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("size", [(33, 47), (64, 80)])
def test_parity_on_odd_and_unseen_sizes(exported, name, size):
    model, path = exported[name]
    report = onnx_io.parity(model, path, shipped("export", parity_height=size[0], parity_width=size[1]))
    assert report["shapes"] == [f"2x1x{size[0]}x{size[1]}", "1x1x48x48"]  # plus the metadata size
    assert report["outputs"] == (["logits", "presence"] if VARIANTS[name].get("presence") else ["logits"])
    assert report["tolerance_used"] <= 1
    assert report["max_abs"] < 1e-4


def test_batch_of_one_and_three(exported):
    model, path = exported["unet_transpose"]
    sess = onnx_io.session(path, threads=1)
    for shape in [(1, 1, 37, 29), (3, 1, 32, 32)]:
        x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = sess.run(["logits"], {"input": x})[0]
        assert got.shape == shape
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_parity_fails_when_the_file_does_not_match_the_model(exported):
    model, path = exported["attention_unet"]
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.head.bias += 0.01  # every logit moves by 0.01, ~20x the tolerance at this net's |logits| < 1
    with pytest.raises(ParityError, match=r"model\.onnx.*max \|diff\| [0-9.e-]+.*tolerance"):
        onnx_io.parity(changed, path, shipped("export"))
    assert onnx_io.parity(model, path, shipped("export"))["tolerance_used"] <= 1  # the original still passes


def test_presence_output_follows_the_model_and_parity_checks_it(exported):
    model, path = exported["unet_presence"]
    sess = onnx_io.session(path, threads=1)
    x = np.random.default_rng(2).standard_normal((3, 1, 40, 56), dtype=np.float32)
    with torch.no_grad():
        logits, presence = model(torch.from_numpy(x))
    got_logits, got_presence = sess.run(["logits", "presence"], {"input": x})
    assert got_presence.shape == (3, 1)
    np.testing.assert_allclose(got_presence, presence.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got_logits, logits.numpy(), rtol=1e-3, atol=1e-4)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.presence.classify.bias += 0.01  # the logits stay as they were: only the presence check can fail
    with pytest.raises(ParityError, match=r"model\.onnx.*disagree on presence"):
        onnx_io.parity(changed, path, shipped("export"))


def test_torchscript_exporter_writes_the_opset_asked_for(tmp_path):
    model = tiny({"name": "unet", "up": "nearest"}).train()
    path = tmp_path / "ts.onnx"
    params = shipped("export", exporter="torchscript", opset=17)
    onnx_io.export(model, path, params, {"size": 32})
    assert model.training  # the caller's mode is restored
    proto = onnx.load(str(path))
    assert [(o.domain, o.version) for o in proto.opset_import if o.domain == ""] == [("", 17)]
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    assert onnx_io.parity(model, path, params)["shapes"] == ["2x1x97x133", "1x1x32x32"]


def test_torchscript_exporter_keeps_the_presence_output(tmp_path):
    model = tiny({"name": "unet", "up": "nearest", "presence": True})
    path = tmp_path / "ts.onnx"
    params = shipped("export", exporter="torchscript", opset=17)
    onnx_io.export(model, path, params, {"size": 32})
    outputs = onnx.load(str(path)).graph.output
    assert [o.name for o in outputs] == ["logits", "presence"]
    assert outputs[1].type.tensor_type.shape.dim[0].dim_param  # any batch
    report = onnx_io.parity(model, path, params)
    assert report["outputs"] == ["logits", "presence"] and report["tolerance_used"] <= 1


def test_bad_metadata_writes_nothing(tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="metadata 'bad': not JSON-encodable"):
        onnx_io.export(tiny({"name": "unet"}), path, shipped("export"), {"bad": {1, 2}})
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_session_options(exported):
    sess = onnx_io.session(exported["res_unet"][1], threads=2)
    options = sess.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert sess.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("opset", 17, "export.opset: expected an opset the dynamo exporter writes"),
        ("opset", 16, "export.opset"),
        ("exporter", "onnxruntime", "export.exporter"),
        ("parity_height", 0, "export.parity_height"),
        ("rtol", -1e-3, "export.rtol"),
        ("atol", float("nan"), "export.atol"),
    ],
)
def test_validate_names_the_key(field, value, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        dataclasses.replace(shipped("export"), **{field: value}).validate("export")


def test_validate_rejects_zero_tolerance():
    with pytest.raises(ValueError, match=r"export\.atol: rtol and atol cannot both be 0"):
        dataclasses.replace(shipped("export"), rtol=0.0, atol=0.0).validate("export")
    shipped("export", exporter="torchscript", opset=17).validate("export")
