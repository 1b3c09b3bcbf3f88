"""checkpoint.py: a saved model comes back the same (weights, eval mode, meta), pruned widths included, and a failed
write leaves nothing behind."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY, shipped
from ultraseg import checkpoint
from ultraseg.ensemble import Ensemble
from ultraseg.models import build_model
from ultraseg.pruning import prune, pruned_widths

CONFIG = {"name": "unet", "widths": TINY, "up": "nearest"}
META = {"kind": "teacher", "model": CONFIG, "size": 32, "threshold": 0.5, "normalize": "zscore",
        "val": {"dice": 0.75, "iou": 0.6}, "run_id": "0123456789abcdef"}


def trained_looking(config: dict = CONFIG, seed: int = 0) -> torch.nn.Module:
    """A model whose weights and BatchNorm statistics are not the freshly built ones."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.train()
        model(torch.randn(4, 1, 32, 32))  # moves the running statistics away from 0 / 1
    return model


def test_round_trip_gives_the_same_outputs_in_eval_mode(tmp_path):
    model = trained_looking()
    assert model.training
    path = tmp_path / "teacher.pt"
    checkpoint.save(path, model, META)
    loaded, meta = checkpoint.load(path)
    assert not loaded.training and all(not m.training for m in loaded.modules())
    assert model.training  # saving does not change the model
    assert meta == META
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert all(p.device.type == "cpu" for p in loaded.parameters())


def test_loaded_state_equals_saved_state(tmp_path):
    model = trained_looking()
    checkpoint.save(tmp_path / "m.pt", model, META)
    loaded, _ = checkpoint.load(tmp_path / "m.pt")
    want, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_the_file_holds_only_tensors_and_plain_data(tmp_path):
    checkpoint.save(tmp_path / "m.pt", trained_looking(), META)
    blob = torch.load(tmp_path / "m.pt", weights_only=True)  # refuses pickled code
    assert set(blob) == {"state", "meta"}
    assert blob["meta"] == META


def test_save_refuses_meta_without_the_model_config(tmp_path):
    meta = {k: v for k, v in META.items() if k != "model"}
    with pytest.raises(ValueError, match="'model'"):
        checkpoint.save(tmp_path / "m.pt", trained_looking(), meta)
    assert list(tmp_path.iterdir()) == []


def test_load_of_a_missing_file_names_it(tmp_path):
    path = tmp_path / "models" / "student.pt"
    with pytest.raises(FileNotFoundError) as err:
        checkpoint.load(path)
    assert str(path) in str(err.value)


def test_a_channel_pruned_model_rebuilds_from_its_weights(tmp_path):
    model = trained_looking().eval()
    before = pruned_widths(model)
    prune(model, torch.randn(1, 1, 32, 32), shipped("prune", ratio=0.5, steps=1, round_to=2, calibration_batches=0))
    after = pruned_widths(model)
    assert after != before  # really pruned: the config's widths no longer describe the network
    checkpoint.save(tmp_path / "pruned.pt", model, META | {"kind": "pruned_student"})
    loaded, meta = checkpoint.load(tmp_path / "pruned.pt")
    assert meta["model"] == CONFIG
    assert pruned_widths(loaded) == after
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_overwrite_replaces_the_old_checkpoint(tmp_path):
    path = tmp_path / "m.pt"
    checkpoint.save(path, trained_looking(seed=0), META)
    second = trained_looking(seed=1)
    checkpoint.save(path, second, META | {"kind": "student"})
    loaded, meta = checkpoint.load(path)
    assert meta["kind"] == "student"
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), second.eval()(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def failing_save(obj, f, *args, **kwargs):
    """Writes part of a file, then fails, as a full disk or an interrupt would."""
    with open(f, "wb") as fh:
        fh.write(b"partial checkpoint")
    raise OSError("no space left on device")


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", failing_save)
    path = tmp_path / "teacher.pt"
    with pytest.raises(OSError, match="no space left"):
        checkpoint.save(path, trained_looking(), META)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file or folder either


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "teacher.pt"
    checkpoint.save(path, trained_looking(), META)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        checkpoint.save(path, trained_looking(seed=1), META | {"kind": "other"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.pt"]


def test_an_ensemble_comes_back_as_the_ensemble_of_its_members(tmp_path):
    members = [trained_looking(seed=seed).eval() for seed in (0, 1, 2)]
    checkpoint.save(tmp_path / "teacher.pt", Ensemble(members), META | {"members": 3})
    loaded, meta = checkpoint.load(tmp_path / "teacher.pt")
    assert isinstance(loaded, Ensemble) and len(loaded.members) == 3 and meta["members"] == 3
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        for member, original in zip(loaded.members, members):
            assert torch.equal(member(x), original(x))
        assert torch.allclose(loaded(x), torch.stack([m(x) for m in members]).mean(0), atol=1e-6)


def test_save_refuses_a_member_count_that_is_not_the_models(tmp_path):
    with pytest.raises(ValueError, match="meta says 2 members, the model has 3"):
        checkpoint.save(tmp_path / "m.pt", Ensemble([trained_looking(seed=s) for s in range(3)]), META | {"members": 2})
    with pytest.raises(ValueError, match="meta says 2 members, the model has 1"):
        checkpoint.save(tmp_path / "m.pt", trained_looking(), META | {"members": 2})
    assert list(tmp_path.iterdir()) == []
