"""One shared tester for every model variant, plus MAC counting, overfitting and rebuilding pruned networks."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from tests.conftest import TINY
from ultraseg.losses import build_loss
from ultraseg.models import MODELS, build_model, count_macs, count_parameters, rebuild_from_state_dict, split_outputs
from ultraseg.models.blocks import ACTS, DOWNS, NORMS, UPS, AttentionGate, make_act, make_norm


VARIANTS = {
    **{name: {"name": name} for name in MODELS},
    "separable": {"name": "unet", "block": "separable"},
    "attention_residual_conv_bilinear": {
        "name": "attention_unet", "block": "residual", "down": "conv", "up": "bilinear", "dropout": 0.1,
    },
    **{f"norm_{norm}": {"name": "unet", "norm": norm} for norm in NORMS},
    **{f"act_{act}": {"name": "unet", "act": act} for act in ACTS},
    **{f"down_{down}": {"name": "unet", "down": down} for down in DOWNS},
    **{f"up_{up}": {"name": "unet", "up": up} for up in UPS},
    "stem_stride_4": {"name": "unet", "stem_stride": 4, "up": "nearest"},
    "unet_pp_stem_stride_2": {"name": "unet_pp", "stem_stride": 2},
}
SIZES = [(33, 47), (64, 64), (17, 30)]



def tiny(config: dict) -> dict:
    return {"widths": TINY, **config}


@pytest.mark.parametrize("config", VARIANTS.values(), ids=VARIANTS.keys())
def test_model_variant(config):
    torch.manual_seed(0)
    model = build_model(tiny(config))
    loss_fn = build_loss({"bce": 1.0, "dice": 1.0})

    # shapes for odd and even sizes, finite outputs, gradients reach every parameter
    for h, w in SIZES:
        x = torch.randn(2, 1, h, w)
        target = (torch.rand(2, 1, h, w) > 0.7).float()
        model.zero_grad(set_to_none=True)
        logits = model(x)
        assert logits.shape == (2, 1, h, w)
        assert torch.isfinite(logits).all()
        loss_fn(logits, target).backward()
        for name, param in model.named_parameters():
            assert param.grad is not None, f"{name} got no gradient at {h}x{w}"
            assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient at {h}x{w}"

    # a reload through build_model reproduces the evaluation output exactly
    model.eval()
    x = torch.randn(1, 1, 33, 47)
    with torch.no_grad():
        expected = model(x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    reloaded = build_model(tiny(config))
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), expected)


def test_build_model_errors():
    with pytest.raises(ValueError, match="attention_unet"):
        build_model({"name": "segformer"})
    with pytest.raises(ValueError, match="widht"):
        build_model({"name": "unet", "widht": [4, 8]})
    with pytest.raises(ValueError, match="instance"):
        build_model({"name": "unet", "norm": "layer"})
    with pytest.raises(ValueError, match="silu"):
        make_act("tanh")
    with pytest.raises(ValueError, match="separable"):
        build_model({"name": "unet", "block": "dense"})
    with pytest.raises(ValueError, match="widths"):
        build_model({"name": "unet", "widths": [8]})
    with pytest.raises(ValueError, match="stem_stride"):
        build_model({"name": "unet", "stem_stride": 0})


def test_named_variants_set_their_defaults():
    assert any(isinstance(m, AttentionGate) for m in build_model({"name": "attention_unet"}).modules())
    assert not any(isinstance(m, AttentionGate) for m in build_model({"name": "unet"}).modules())
    res = build_model({"name": "res_unet", "widths": TINY})
    assert type(res.stem).__name__ == "ResidualBlock"


def test_stem_stride_runs_every_layer_below_full_resolution():
    model = build_model({"name": "unet", "widths": TINY, "stem_stride": 4})
    sides = {}

    def record(module: nn.Module, _: tuple, out: torch.Tensor) -> None:
        sides[module] = out.shape[-1]

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    logits = model(torch.zeros(1, 1, 64, 64))
    for hook in hooks:
        hook.remove()
    assert logits.shape == (1, 1, 64, 64)
    assert max(sides.values()) == 16  # the stem, the last decoder level and the head's 16 sub-pixel logits
    assert model.head.conv.out_channels == 16
    # a full 3x3 convolution costs stride**2 less at 1/stride resolution
    classic = build_model({"name": "unet", "widths": TINY})
    assert count_macs(model, 64) < count_macs(classic, 64) / 10
    # the classic network is unchanged: no patchify layer, a 1x1 convolution head
    assert isinstance(classic.head, nn.Conv2d) and type(classic.stem).__name__ == "DoubleConv"


def test_group_norm_groups_divide_channels():
    for channels in (1, 3, 4, 6, 12, 16, 20):
        norm = make_norm("group", channels)
        assert channels % norm.num_groups == 0


def test_classic_unet_channels():
    model = build_model({"name": "unet", "widths": [64, 128, 256, 512, 1024]})
    assert model.downs[-1].block.conv2.conv.out_channels == 1024
    assert model.ups[0].up.in_channels == 1024 and model.ups[0].up.out_channels == 512
    assert model.head.in_channels == 64
    # 31.0 M parameters in the paper's network (with padding and batch norm it is 31.04 M)
    assert 31.0e6 < count_parameters(model) < 31.1e6


def test_count_macs_by_hand():
    conv = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1))
    assert count_macs(conv, (10, 12)) == 10 * 12 * 4 * 2 * 9
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2))
    assert count_macs(grouped, 16) == 8 * 8 * 8 * (4 // 2) * 9
    transposed = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ConvTranspose2d(3, 5, 2, stride=2))
    assert count_macs(transposed, 6) == 6 * 6 * 3 * 1 + (6 * 6 * 3) * 5 * 4
    assert count_parameters(conv) == 4 * 2 * 9 + 4


def test_count_macs_monotone_in_widths():
    macs = [count_macs(build_model({"name": "unet", "widths": w}), 32) for w in ([4, 8], [4, 8, 16], [8, 16, 32])]
    assert macs[0] < macs[1] < macs[2]
    model = build_model({"name": "unet", "widths": TINY})
    assert count_macs(model, 64) == 4 * count_macs(model, 32)
    assert model.training  # mode restored


def disc_batch(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy images of a brighter disc at different places and radii, with their masks."""
    generator = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = []
    for cy, cx, r in [(10, 12, 6), (20, 18, 8), (16, 16, 4), (22, 9, 5)][:n]:
        masks.append(((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).float())
    mask = torch.stack(masks)[:, None]
    image = mask * 0.8 + 0.3 * torch.randn(mask.shape, generator=generator)
    return image, mask


def test_tiny_model_overfits_discs():
    torch.manual_seed(0)
    image, mask = disc_batch()
    model = build_model({"name": "unet", "widths": [8, 16, 32]})
    loss_fn = build_loss({"bce": 1.0, "dice": 1.0})
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        optimiser.zero_grad()
        loss = loss_fn(model(image), mask)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    model.eval()
    with torch.no_grad():
        pred = (model(image) > 0).float()
    dice = 2 * (pred * mask).sum((1, 2, 3)) / (pred.sum((1, 2, 3)) + mask.sum((1, 2, 3)))
    assert dice.min() > 0.9, dice


def _kill_channels(state: dict, prefix: str, channels: slice) -> None:
    """Zero the norm scale and shift of ``channels`` under ``prefix``, so after ReLU they carry zeros."""
    state[f"{prefix}.norm.weight"][channels] = 0
    state[f"{prefix}.norm.bias"][channels] = 0


def _narrow(state: dict, key: str, dim: int, keep: int) -> None:
    state[key] = state[key].narrow(dim, 0, keep).clone()


def _narrow_norm(state: dict, prefix: str, keep: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        if f"{prefix}.norm.{name}" in state:
            _narrow(state, f"{prefix}.norm.{name}", 0, keep)


@pytest.mark.parametrize(
    "norm, prefix, keep",
    # with group norm, keep per-channel groups on both sides (8 channels in 8 groups -> 4 in 4) so the
    # narrowed network computes the same function
    [("batch", "downs.0.block", 5), ("group", "stem", 4)],
)
def test_rebuild_narrowed_double_conv(norm, prefix, keep):
    config = {"name": "unet", "widths": [8, 16, 32], "norm": norm}
    torch.manual_seed(0)
    model = build_model(config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # the middle channels after `keep` are dead (zero after ReLU): removing them changes nothing
    _kill_channels(state, f"{prefix}.conv1", slice(keep, None))
    model.load_state_dict(state)
    _narrow(state, f"{prefix}.conv1.conv.weight", 0, keep)
    _narrow_norm(state, f"{prefix}.conv1", keep)
    _narrow(state, f"{prefix}.conv2.conv.weight", 1, keep)

    rebuilt = rebuild_from_state_dict(config, state).eval()
    block = rebuilt.get_submodule(prefix)
    assert block.conv1.conv.out_channels == keep and block.conv2.conv.in_channels == keep
    if norm == "group":
        assert block.conv1.norm.num_groups == keep
    assert count_parameters(rebuilt) < count_parameters(model)
    x = torch.randn(2, 1, 33, 47)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_rebuild_narrowed_separable_block():
    config = {"name": "unet", "widths": [8, 16, 32], "block": "separable"}
    torch.manual_seed(0)
    model = build_model(config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    block = "downs.1.block"  # 16 -> mid 32 -> 32; keep 20 middle channels
    _kill_channels(state, f"{block}.pointwise1", slice(20, None))
    _kill_channels(state, f"{block}.depthwise2", slice(20, None))
    model.load_state_dict(state)
    _narrow(state, f"{block}.pointwise1.conv.weight", 0, 20)
    _narrow_norm(state, f"{block}.pointwise1", 20)
    _narrow(state, f"{block}.depthwise2.conv.weight", 0, 20)
    _narrow_norm(state, f"{block}.depthwise2", 20)
    _narrow(state, f"{block}.pointwise2.conv.weight", 1, 20)

    rebuilt = rebuild_from_state_dict(config, state).eval()
    assert rebuilt.downs[1].block.depthwise2.conv.groups == 20
    x = torch.randn(1, 1, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_rebuild_loads_strictly():
    config = {"name": "unet", "widths": TINY}
    state = build_model(config).state_dict()
    state["head.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="head.extra"):
        rebuild_from_state_dict(config, state)


@pytest.mark.parametrize("name", ["unet", "unet_pp"])
def test_presence_head_answers_once_per_image_from_the_deepest_features(name):
    torch.manual_seed(0)
    model = build_model({"name": name, "widths": [4, 8, 16], "norm": "instance", "presence": True}).eval()
    x = torch.randn(3, 1, 32, 40)
    logits, presence = split_outputs(model(x))
    assert logits.shape == (3, 1, 32, 40) and presence.shape == (3, 1)
    deepest = model.downs[-1](model.downs[0](model.stem(x)))  # the bottleneck the head reads
    torch.testing.assert_close(presence, model.presence(deepest))
    # each image's answer is its own: a batch of one gives the same logit
    torch.testing.assert_close(split_outputs(model(x[1:2]))[1], presence[1:2])
    plain = build_model({"name": name, "widths": [4, 8, 16], "norm": "instance"})
    assert split_outputs(plain(x))[1] is None and count_macs(model, 32) > count_macs(plain, 32)


@pytest.mark.parametrize("share", [0.0, 0.25])
def test_presence_grad_scales_only_the_presence_terms_gradient_into_the_shared_layers(share):
    config = {"name": "unet", "widths": [4, 8, 16], "norm": "instance", "presence": True}
    torch.manual_seed(0)
    full = build_model(config)
    scaled = build_model(config | {"presence_grad": share})
    scaled.load_state_dict(full.state_dict())
    x = torch.randn(2, 1, 32, 32)

    def grads(model, which):
        model.zero_grad()
        logits, presence = split_outputs(model(x))
        (logits.square().mean() if which == "mask" else presence.sum()).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    # the same answers, and the mask's gradient untouched
    torch.testing.assert_close(split_outputs(scaled(x))[1], split_outputs(full(x))[1])
    for name, grad in grads(scaled, "mask").items():
        torch.testing.assert_close(grad, grads(full, "mask")[name])
    # the presence term: the head learns in full, the shared layers at ``share`` of the gradient
    reference, got = grads(full, "presence"), grads(scaled, "presence")
    assert reference.keys() == got.keys() and any(name.startswith("stem") for name in got)
    for name, grad in got.items():
        expected = reference[name] if name.startswith("presence.") else share * reference[name]
        torch.testing.assert_close(grad, expected)
    with pytest.raises(ValueError, match="presence_grad"):
        build_model(config | {"presence_grad": 1.5})
