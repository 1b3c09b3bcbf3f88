"""Channel pruning: every variant shrinks to the expected widths, still works, and rebuilds from its weights."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from ultraseg import checkpoint
from ultraseg.losses import build_loss
from ultraseg.models import build_model, count_macs, count_parameters, rebuild_from_state_dict, split_outputs
from ultraseg.pruning import _head_inputs, prune, pruned_widths, recalibrate_norms, summary
from tests.conftest import shipped

WIDTHS = [8, 16, 32, 64]
EXAMPLE = torch.zeros(1, 1, 32, 32)

# (config, largest MACs ratio, largest params ratio) at ratio 0.5. Halving every width quarters a full convolution's
# cost; the separable blocks keep relatively more, since their depthwise convolutions cost linearly in the width and
# the input-reading convolutions keep their one input channel.
VARIANTS = {
    "unet": ({"name": "unet"}, 0.30, 0.30),
    "attention_unet": ({"name": "attention_unet"}, 0.30, 0.30),
    "res_unet": ({"name": "res_unet"}, 0.30, 0.30),
    "separable_bilinear_conv": (
        {"name": "unet", "block": "separable", "up": "bilinear", "down": "conv"}, 0.40, 0.36),
    "group_norm": ({"name": "unet", "norm": "group"}, 0.30, 0.30),
    "instance_norm": ({"name": "unet", "norm": "instance"}, 0.30, 0.30),
    "unet_pp": ({"name": "unet_pp"}, 0.30, 0.30),
    "attention_separable_nearest": (
        {"name": "attention_unet", "block": "separable", "up": "nearest", "dropout": 0.1}, 0.40, 0.36),
    "stem_stride_nearest": ({"name": "unet", "stem_stride": 2, "up": "nearest"}, 0.30, 0.30),
    "presence_head": ({"name": "unet", "stem_stride": 2, "up": "nearest", "norm": "instance", "presence": True},
                      0.30, 0.32),
    "presence_head_own_gradient": ({"name": "unet", "stem_stride": 2, "up": "nearest", "norm": "instance",
                                    "presence": True, "presence_grad": 0.0}, 0.30, 0.32),
}


def tiny(config: dict) -> dict:
    return {**config, "widths": WIDTHS}


def head_conv(model: nn.Module) -> nn.Conv2d:
    """The convolution that writes the logits (before the pixel shuffle of a ``stem_stride`` network)."""
    return model.head if isinstance(model.head, nn.Conv2d) else model.head.conv


def head_inputs(model: nn.Module) -> set[str]:
    """Names of the convolutions whose channels the head reads: they keep them all."""
    names = {m: n for n, m in model.named_modules()}
    readers = {names[m] for m in _head_inputs(model, EXAMPLE, head_conv(model))}
    assert readers and all(not n.startswith("head") for n in readers)
    return readers


def presence_layers(model: nn.Module) -> set[str]:
    """Names of the presence head's convolutions: they keep their output channels."""
    return {n for n, m in model.named_modules() if n.startswith("presence.") and isinstance(m, nn.Conv2d)}


def same_outputs(a, b) -> bool:
    """Whether two forwards (logits, or logits and presence logits) are equal."""
    return all(torch.equal(x, y) for x, y in zip(split_outputs(a), split_outputs(b)) if x is not None)


def expected_width(original: int, ratio: float, round_to: int) -> int:
    """Local pruning keeps ``(1 - ratio)`` of a layer, rounded down to ``round_to``, but at least ``round_to``."""
    if original <= round_to:
        return original
    return max(round_to, int(original * (1 - ratio)) // round_to * round_to)


@pytest.mark.parametrize("config, max_macs, max_params", VARIANTS.values(), ids=VARIANTS.keys())
def test_prune_variant(config, max_macs, max_params, tmp_path):
    torch.manual_seed(0)
    config = tiny(config)
    model = build_model(config)
    before = copy.deepcopy(model)
    params = shipped("prune", ratio=0.5, steps=2, round_to=4)
    calls = []
    pruned = prune(model, EXAMPLE, params, finetune=lambda m, step: calls.append((step, count_parameters(m))))

    # the callback runs once per step on the model being pruned, which shrinks at every step
    assert pruned is model
    assert [step for step, _ in calls] == [0, 1]
    assert count_parameters(before) > calls[0][1] > calls[1][1] == count_parameters(model)

    # every layer keeps half its channels, a multiple of 4; the input channels and the head's output stay
    widths_before, widths = pruned_widths(before), pruned_widths(model)
    kept = head_inputs(before) | presence_layers(before)
    assert widths.keys() == widths_before.keys()
    for name, width in widths.items():
        assert width == (widths_before[name] if name in kept else expected_width(widths_before[name], 0.5, 4)), name
        assert width % 4 == 0 or width == widths_before[name] < 4, name
    assert head_conv(model).out_channels == model.stem_stride**2
    assert next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels == 1

    stats = summary(before, model, 32)
    assert stats["macs_ratio"] <= max_macs and stats["params_ratio"] <= max_params, stats
    assert stats["macs_ratio"] >= 0.2 and stats["params_ratio"] >= 0.2, stats
    assert stats["bytes_after"] < 0.4 * stats["bytes_before"]

    # still a working network: odd sizes keep their shape, gradients reach every parameter
    model.train()
    x = torch.randn(2, 1, 33, 47)
    outputs = model(x)
    logits, presence = split_outputs(outputs)
    assert logits.shape == (2, 1, 33, 47) and torch.isfinite(logits).all()
    assert presence is None or (presence.shape == (2, 1) and torch.isfinite(presence).all())
    loss = build_loss({"bce": 1.0, "dice": 1.0, "presence": 0.0 if presence is None else 1.0})
    loss(outputs, (x > 0.5).float()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name

    # rebuilt from its weights alone (directly and through a checkpoint), it computes the same function
    model.eval()
    with torch.no_grad():
        expected = model(x)
        rebuilt = rebuild_from_state_dict(config, model.state_dict()).eval()
        assert same_outputs(rebuilt(x), expected)
        assert pruned_widths(rebuilt) == widths
        checkpoint.save(tmp_path / "pruned.pt", model, {"model": config, "pruned_widths": widths})
        loaded, meta = checkpoint.load(tmp_path / "pruned.pt")
        assert same_outputs(loaded(x), expected)
    assert pruned_widths(loaded) == meta["pruned_widths"] == widths
    checkpoint.save(tmp_path / "dense.pt", before, {"model": config})
    # smaller on disk too, if by less than the tensors alone: pickling costs a fixed amount per tensor
    assert (tmp_path / "pruned.pt").stat().st_size < 0.7 * (tmp_path / "dense.pt").stat().st_size


@pytest.mark.parametrize("ratio, steps", [(0.25, 3), (0.8, 1)])
def test_widths_for_other_ratios(ratio, steps):
    """At 0.8 the 8- to 32-channel layers would round to 0 channels; they keep ``round_to`` instead."""
    model = build_model(tiny({"name": "res_unet"}))
    widths_before, kept = pruned_widths(model), head_inputs(model)
    prune(model, EXAMPLE, shipped("prune", ratio=ratio, steps=steps, round_to=4))
    for name, width in pruned_widths(model).items():
        assert width == (widths_before[name] if name in kept else expected_width(widths_before[name], ratio, 4)), name


def test_group_norm_groups_follow_the_rebuild_convention():
    model = build_model(tiny({"name": "unet", "norm": "group"}))
    prune(model, EXAMPLE, shipped("prune", ratio=0.5, steps=1))
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    # 8 channels in 8 groups became 4 in gcd(8, 4) = 4 groups; 64 channels in 8 groups became 32 in 8 groups
    assert {(m.num_channels, m.num_groups) for m in norms} == {(4, 4), (8, 8), (16, 8), (32, 8)}


def test_global_pruning_meets_the_total_and_keeps_round_to():
    torch.manual_seed(0)
    model = build_model(tiny({"name": "res_unet"}))
    before = copy.deepcopy(model)
    # l1: the untrained network's BatchNorm scales all equal 1, a tie that global ranking cannot split
    prune(model, EXAMPLE, shipped("prune", ratio=0.5, steps=2, global_pruning=True, importance="l1"))
    stats = summary(before, model, 32)
    assert 0.2 <= stats["macs_ratio"] <= 0.3 and 0.2 <= stats["params_ratio"] <= 0.3, stats  # 0.242, 0.278
    widths = pruned_widths(model)
    assert all(w % 4 == 0 for name, w in widths.items() if name != "head")
    assert len({w / widths_before for w, widths_before in zip(widths.values(), pruned_widths(before).values())}) > 2
    model.eval()
    x = torch.randn(1, 1, 33, 47)
    rebuilt = rebuild_from_state_dict(tiny({"name": "res_unet"}), model.state_dict()).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_ratio_zero_changes_nothing():
    torch.manual_seed(0)
    model = build_model(tiny({"name": "attention_unet"})).eval()
    before = copy.deepcopy(model)
    prune(model, EXAMPLE, shipped("prune", ratio=0.0, steps=2))
    assert pruned_widths(model) == pruned_widths(before)
    x = torch.randn(1, 1, 33, 47)
    with torch.no_grad():
        assert torch.equal(model(x), before(x))


def test_training_mode_is_kept():
    model = build_model(tiny({"name": "unet"})).train()
    prune(model, EXAMPLE, shipped("prune", ratio=0.5, steps=1))
    assert model.training


def dead_channels_model() -> nn.Module:
    """A U-Net whose stem conv1 has 4 dead channels (norm scale and shift 0, so ReLU outputs 0) with the largest
    weights, and 4 live ones with small weights."""
    torch.manual_seed(0)
    model = build_model({"name": "unet", "widths": [8, 16]})
    conv1 = model.stem.conv1
    with torch.no_grad():
        conv1.norm.weight[:4] = 0
        conv1.norm.bias[:4] = 0
        conv1.conv.weight[:4] *= 100
    return model


@pytest.mark.parametrize("importance, keeps", [("l1", "large"), ("l2", "large"), ("bn_scale", "live"),
                                                ("taylor", "live")])
def test_importance_criteria_rank_channels(importance, keeps):
    model = dead_channels_model()
    original = model.stem.conv1.conv.weight.detach().clone()
    images = torch.randn(4, 1, 32, 32)
    batch = (images, (images > 0.5).float())
    prune(model, EXAMPLE, shipped("prune", ratio=0.5, steps=1, importance=importance), example_batch=batch)
    kept = model.stem.conv1.conv.weight.detach()
    assert kept.shape[0] == 4
    # which original channels survived: each kept filter is an unchanged copy of one of them
    survivors = {int((original - row).flatten(1).abs().sum(1).argmin()) for row in kept}
    assert survivors == ({0, 1, 2, 3} if keeps == "large" else {4, 5, 6, 7})


def test_taylor_uses_the_given_loss():
    model = dead_channels_model()
    images = torch.randn(2, 1, 32, 32)
    seen = []

    def loss_fn(logits, images_, masks):
        seen.append(images_.shape)
        return logits.square().mean()

    prune(model, EXAMPLE, shipped("prune", ratio=0.5, steps=2, importance="taylor"),
          example_batch=(images, images > 0), loss_fn=loss_fn)
    assert seen == [(2, 1, 32, 32)] * 2
    assert all(p.grad is None for p in model.parameters())


def test_taylor_without_a_batch_is_refused():
    with pytest.raises(ValueError, match="example_batch"):
        prune(build_model(tiny({"name": "unet"})), EXAMPLE, shipped("prune", importance="taylor"))


@pytest.mark.parametrize("field, value", [
    ("ratio", 0.96), ("ratio", -0.1), ("ratio", float("nan")), ("steps", 0), ("steps", 1.5),
    ("importance", "random"), ("round_to", 0), ("finetune_epochs", -1), ("global_pruning", "yes"),
    ("calibration_batches", -1), ("calibration_batches", 2.0),
])
def test_validate_names_the_field(field, value):
    params = dataclasses.replace(shipped("prune"), **{field: value})
    with pytest.raises(ValueError, match=rf"^prune\.{field}: "):
        params.validate("prune")
    with pytest.raises(ValueError, match=rf"^prune\.{field}: "):
        prune(build_model(tiny({"name": "unet"})), EXAMPLE, params)


def test_shipped_params_are_valid_and_frozen():
    params = shipped("prune")
    params.validate("prune")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.ratio = 0.1


def test_summary_by_hand():
    before = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 1, 1))
    after = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))
    stats = summary(before, after, 10)
    assert stats["params_before"] == 8 * 9 + 8 + 2 * 8 + 8 + 1
    assert stats["params_after"] == 4 * 9 + 4 + 2 * 4 + 4 + 1
    assert stats["macs_before"] == count_macs(before, 10) == 100 * (8 * 9 + 8)
    assert stats["macs_ratio"] == pytest.approx(0.5)
    # float32 parameters and BN running statistics (4 bytes each) plus the int64 batch counter
    assert stats["bytes_before"] == 4 * (stats["params_before"] + 2 * 8) + 8
    assert stats["bytes_ratio"] == stats["bytes_after"] / stats["bytes_before"]


def disc_batch(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images of a brighter disc at different places and radii, with their masks."""
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    discs = [(10, 12, 6), (20, 18, 8), (16, 16, 4), (22, 9, 5)]
    mask = torch.stack([((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).float() for cy, cx, r in discs])[:, None]
    return mask * 0.8 + 0.3 * torch.randn(mask.shape, generator=generator), mask


def train(model: nn.Module, image: torch.Tensor, mask: torch.Tensor, steps: int) -> None:
    loss_fn = build_loss({"bce": 1.0, "dice": 1.0})
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)  # a new one: pruning replaced the parameters
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        loss_fn(model(image), mask).backward()
        optimiser.step()


def dice(model: nn.Module, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        pred = (model(image) > 0).float()
    return 2 * (pred * mask).sum((1, 2, 3)) / (pred.sum((1, 2, 3)) + mask.sum((1, 2, 3)))


def test_pruned_and_finetuned_model_still_segments():
    torch.manual_seed(0)
    image, mask = disc_batch()
    model = build_model({"name": "unet", "widths": [8, 16, 32]})
    train(model, image, mask, 120)
    assert dice(model, image, mask).min() > 0.9
    before = copy.deepcopy(model)

    def finetune(m: nn.Module, step: int) -> None:
        m.to(memory_format=torch.channels_last)  # as training.fit does on the CPU; the next step prunes NHWC weights
        train(m, image, mask, 30)

    prune(model, EXAMPLE, shipped("prune", ratio=0.5, steps=2), finetune=finetune)
    assert summary(before, model, 32)["macs_ratio"] < 0.3
    assert dice(model, image, mask).min() > 0.9


def test_light_pruning_without_finetuning_keeps_a_trained_model_working():
    """A light prune of a trained model must leave it segmenting: L1 ranking is meaningless with a BatchNorm after
    every convolution, and the head must keep the channels it reads lesions from."""
    torch.manual_seed(0)
    image, mask = disc_batch()
    model = build_model({"name": "unet", "widths": [8, 16, 32]})
    train(model, image, mask, 120)
    assert dice(model, image, mask).min() > 0.9
    prune(model, EXAMPLE, shipped("prune", ratio=0.15, steps=1, round_to=1))
    assert dice(model, image, mask).mean() > 0.7


def test_recalibrate_norms_measures_the_batch_statistics_and_keeps_the_rest():
    """The dropout before the norm stays off (eval mode) while the statistics are measured."""
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Dropout(0.5), nn.BatchNorm2d(3), nn.Conv2d(3, 1, 1)).train()
    x = torch.randn(8, 1, 8, 8) * 3 + 1
    recalibrate_norms(net, [x[:4], x[4:]])
    with torch.no_grad():
        features = net[0](x)
    torch.testing.assert_close(net[2].running_mean, features.mean((0, 2, 3)))
    # an equal-weight average of the two batches' unbiased variances
    var = torch.stack([features[:4].var((0, 2, 3)), features[4:].var((0, 2, 3))]).mean(0)
    torch.testing.assert_close(net[2].running_var, var)
    assert net.training and net[1].training and net[2].momentum == 0.1 and net[2].num_batches_tracked == 2


def test_calibration_recalibrates_every_step_and_is_optional():
    torch.manual_seed(0)
    image, mask = disc_batch()
    model = build_model({"name": "unet", "widths": [8, 16, 32]})
    train(model, image, mask, 120)
    without = prune(copy.deepcopy(model), EXAMPLE, shipped("prune", ratio=0.5, steps=2, calibration_batches=0),
                    calibration=[image])
    repaired = prune(copy.deepcopy(model), EXAMPLE, shipped("prune", ratio=0.5, steps=2), calibration=[image])
    assert pruned_widths(without) == pruned_widths(repaired)
    norm = repaired.stem.conv1.norm
    assert norm.num_batches_tracked == 1  # measured again on the one calibration batch
    assert dice(repaired, image, mask).mean() > dice(without, image, mask).mean()
