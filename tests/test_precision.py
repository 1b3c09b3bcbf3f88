"""Training precision: chosen from the CPU's features read at run time, refused in one line where bf16 cannot run
natively, and bf16 steps agreeing with fp32 ones."""

from __future__ import annotations

import pytest
import torch

from ultraseg import precision as precision_mod, training
from ultraseg.losses import build_loss
from ultraseg.models.registry import build_model
from ultraseg.params import ParamsError
from tests.conftest import shipped, shipped_params

CPU = torch.device("cpu")


def bf16_autocast_runs() -> bool:
    """Whether this torch runs a convolution under CPU bf16 autocast at all (natively or emulated)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3)).sum().item()
    except RuntimeError:
        return False
    return True


def allow(name: str, monkeypatch) -> None:
    """Let ``name`` resolve on this CPU. Without native bf16, oneDNN emulates it: slower, same arithmetic contract,
    so its correctness is tested everywhere; skipped only where torch cannot run it at all."""
    features = precision_mod.cpu_features()
    if name == "bf16" and not precision_mod.cpu_has_bf16(features):
        if not bf16_autocast_runs():
            pytest.skip(f"bf16: this CPU lacks {' and '.join(precision_mod.BF16_FEATURES)} (has "
                        f"{', '.join(features) or 'none of the recorded features'}) and torch cannot emulate them")
        monkeypatch.setattr(precision_mod, "cpu_features", lambda: (*features, "amx_bf16"))


@pytest.mark.parametrize("features, expected", [
    ((), "fp32"), (("avx2",), "fp32"), (("avx2", "avx512f"), "fp32"), (("avx512f", "avx512_bf16"), "bf16"),
    (("amx_tile", "amx_bf16"), "bf16"),
])
def test_auto_uses_bf16_only_on_a_cpu_that_multiplies_it_natively(features, expected, monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_features", lambda: features)
    chosen = precision_mod.resolve("auto", CPU)
    assert chosen.record() == {"precision": expected, "cpu_features": list(features)}
    assert precision_mod.resolve("fp32", CPU).name == "fp32"


def test_bf16_without_the_features_is_refused_in_one_line_naming_key_and_feature(monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_features", lambda: ("avx2",))
    with pytest.raises(ParamsError) as err:
        precision_mod.resolve("bf16", CPU)
    assert str(err.value) == ("train.precision: bf16 needs a CPU with avx512_bf16 or amx_bf16; this one has avx2 "
                              "(use auto or fp32)")
    monkeypatch.setattr(precision_mod, "cpu_features", lambda: ("avx512_bf16",))
    assert precision_mod.resolve("bf16", CPU).dtype == torch.bfloat16


def test_cpu_features_are_read_from_this_machine():
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    assert precision_mod.cpu_features() == tuple(f for f in precision_mod.RECORDED_FEATURES if f in flags)


def test_the_precision_key_takes_only_known_values():
    assert shipped_params({"train": {"precision": "bf16"}}).train.precision == "bf16"
    with pytest.raises(ParamsError, match=r"^train\.precision"):
        shipped_params({"train": {"precision": "fp16"}})


def one_step(name: str) -> tuple[float, torch.Tensor]:
    """Loss and flattened gradients of one training step of a tiny shipped-style U-Net from fixed weights."""
    torch.manual_seed(0)
    model = build_model(shipped("train.model", widths=[8, 16, 32], norm="instance", presence=False).config())
    model.to(memory_format=training.memory_format(CPU))
    images = torch.randn(4, 1, 32, 32).contiguous(memory_format=training.memory_format(CPU))
    masks = (torch.randn(4, 1, 32, 32) > 0.5).float()
    criterion = build_loss({"bce": 1.0, "dice": 1.0})
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # the step's gradients, weights left as they were
    chosen = precision_mod.resolve(name, CPU)
    loss = training.train_step(model, model, optimizer, chosen.grad_scaler(), chosen,
                               lambda logits, _x, m: criterion(logits, m), 1.0, images, masks)
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_bf16_and_fp32_training_steps_agree(monkeypatch):
    """bf16 keeps 8 of fp32's 24 mantissa bits (relative rounding ~0.4% per operation): from the same weights and
    batch, the loss agrees within 1% and the gradient direction within a cosine of 0.99, and yet they are not
    identical (the autocast did run)."""
    allow("bf16", monkeypatch)
    loss32, grad32 = one_step("fp32")
    loss16, grad16 = one_step("bf16")
    assert loss16 == pytest.approx(loss32, rel=0.01)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.99
    assert not torch.equal(grad16, grad32)
