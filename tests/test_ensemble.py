"""The ensemble answers as one network whose logits (and presence logits) are the mean of its members'."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY, shipped
from ultraseg.ensemble import Ensemble
from ultraseg.models import build_model, split_outputs


def teachers(count: int, presence: bool = True) -> list[torch.nn.Module]:
    """``count`` tiny teachers (the shipped train.model at TINY widths), each from its own seed, in eval mode."""
    config = shipped("train.model", widths=TINY, presence=presence).config()
    members = []
    for seed in range(count):
        torch.manual_seed(seed)
        members.append(build_model(config).eval())
    return members


def image(height: int = 37, width: int = 45) -> torch.Tensor:
    return torch.randn(2, 1, height, width, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def test_logits_and_presence_are_the_members_mean():
    members = teachers(3)
    x = image()
    outputs = [split_outputs(m(x)) for m in members]
    logits, presence = Ensemble(members).eval()(x)
    assert logits.shape == outputs[0][0].shape == (2, 1, 37, 45)
    assert presence.shape == outputs[0][1].shape == (2, 1)
    torch.testing.assert_close(logits, (outputs[0][0] + outputs[1][0] + outputs[2][0]) / 3)
    torch.testing.assert_close(presence, (outputs[0][1] + outputs[1][1] + outputs[2][1]) / 3)
    # the members differ, so a mean is not just any one of them
    assert (outputs[0][0] - outputs[1][0]).abs().max() > 1e-3
    assert (outputs[0][1] - outputs[1][1]).abs().max() > 1e-4


@torch.no_grad()
def test_members_without_presence_head_give_plain_logits():
    members = teachers(2, presence=False)
    x = image(32, 32)
    out = Ensemble(members).eval()(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, (members[0](x) + members[1](x)) / 2)


@torch.no_grad()
def test_one_member_is_that_member():
    (member,) = teachers(1)
    x = image()
    logits, presence = Ensemble([member]).eval()(x)
    expected_logits, expected_presence = member(x)
    assert torch.equal(logits, expected_logits) and torch.equal(presence, expected_presence)


def test_state_and_mode_reach_every_member():
    members = teachers(2)
    ensemble = Ensemble(members)
    assert sum(p.numel() for p in ensemble.parameters()) == sum(p.numel() for m in members for p in m.parameters())
    ensemble.train()
    assert all(m.training for m in members)
    ensemble.eval()
    assert not any(m.training for m in members)


def test_empty_member_list_is_refused():
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


def test_members_must_agree_on_the_presence_head():
    ensemble = Ensemble([*teachers(1), *teachers(1, presence=False)]).eval()
    with pytest.raises(ValueError, match="1 of the ensemble's 2 members have a presence head"):
        with torch.no_grad():
            ensemble(image(32, 32))
