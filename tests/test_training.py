"""The training loop: determinism, resume after an interrupt, early stopping, the LR schedule."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.test_precision import allow
from ultraseg import training
from ultraseg.data.augment import Augment
from ultraseg.data.dataset import SegmentationSet
from ultraseg.losses import build_loss
from ultraseg.models.registry import build_model
from ultraseg.models.unet import split_outputs
from ultraseg.params import ParamsError, TrainParams
from tests.conftest import shipped


class RecordingLive:
    """Stands in for dvclive.Live; optionally raises at a given step to simulate an interrupted run."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.rows: list[dict[str, float]] = [{}]
        self.interrupt_at = interrupt_at

    def log_metric(self, name: str, value: float) -> None:
        self.rows[-1][name] = value

    def next_step(self) -> None:
        if self.interrupt_at is not None and len(self.rows) == self.interrupt_at:
            raise KeyboardInterrupt("simulated interrupt")
        self.rows.append({})


def discs(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy bright discs (images, z-scored) and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for k in range(n):
        cy, cx, r = rng.uniform(10, size - 10, 2).tolist() + [rng.uniform(4, 8)]
        masks[k] = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    images = masks * 1.0 + rng.normal(0, 0.3, masks.shape)
    images = (images - images.mean()) / images.std()
    return images.astype(np.float32), masks


CFG = shipped("train", epochs=3, batch_size=4, lr=0.01, warmup_epochs=1, patience=0,
              model={"widths": [4, 8, 16]}, augment={"speckle_p": 1.0})


def run(tmp_path, cfg: TrainParams = CFG, live=None, run_id: str = "a", empty_val: bool = False):
    x, y = discs(12)
    vx, vy = discs(6, seed=1)
    if empty_val:
        vy = np.zeros_like(vy)
    torch.manual_seed(0)
    model = build_model(cfg.model.config())
    loss = build_loss({"bce": 1.0, "dice": 1.0})
    return training.fit(model, SegmentationSet(x, y, Augment(cfg.augment), cfg.seed), vx, vy, cfg,
                      lambda logits, _x, m: loss(logits, m), torch.device("cpu"), live or RecordingLive(),
                      tmp_path / "resume.pt", run_id, desc="test")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_params_same_result(tmp_path, precision: str, monkeypatch) -> None:
    allow(precision, monkeypatch)
    cfg = replace(CFG, precision=precision)
    a = run(tmp_path / "a", cfg)
    b = run(tmp_path / "b", cfg)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, ema: float, precision: str,
                                                          monkeypatch) -> None:
    allow(precision, monkeypatch)
    cfg = replace(CFG, ema=ema, precision=precision)
    reference = run(tmp_path / "ref", cfg)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", cfg, live=RecordingLive(interrupt_at=2))  # dies while logging epoch 2
    assert (tmp_path / "cut" / "resume.pt").exists()
    live = RecordingLive()
    resumed = run(tmp_path / "cut", cfg, live=live)
    assert len(live.rows) - 1 == 3  # epoch 1 replayed from the resume file, epochs 2 and 3 trained
    for key in ("train_loss", "val_loss", "val_dice"):  # val is scored on the weight average when ema is on
        assert [r[key] for r in resumed.history] == pytest.approx([r[key] for r in reference.history]), key
    assert all(torch.allclose(resumed.best_state[k].float(), reference.best_state[k].float())
               for k in reference.best_state)


def test_resume_file_of_other_params_is_ignored(tmp_path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, live=RecordingLive(interrupt_at=2))
    live = RecordingLive()
    run(tmp_path, live=live, run_id="other")
    assert len(live.rows) - 1 == 3 and "train/loss" in live.rows[0]  # trained from epoch 1, nothing replayed


def test_ema_keeps_and_validates_the_weight_average(tmp_path) -> None:
    """With a decay near 1 the average stays near the weights after the first step (where it starts), however far
    training moves them."""
    torch.manual_seed(0)
    initial = build_model(CFG.model.config()).state_dict()
    slow = run(tmp_path / "slow", replace(CFG, ema=0.9999, epochs=4))
    plain = run(tmp_path / "plain", replace(CFG, epochs=4))
    weights = [k for k, v in initial.items() if v.is_floating_point() and "running" not in k]
    drift = max((slow.best_state[k] - initial[k]).abs().max().item() for k in weights)
    moved = max((plain.best_state[k] - initial[k]).abs().max().item() for k in weights)
    assert moved > 1e-2 and drift < moved / 5
    assert slow.history[-1]["val_loss"] != plain.history[-1]["val_loss"]  # validated on the average


def test_early_stopping_stops_after_patience(tmp_path) -> None:
    # a val set without lesions has Dice NaN every epoch: the first epoch is kept and nothing ever improves on it
    result = run(tmp_path, replace(CFG, epochs=12, patience=2), empty_val=True)
    assert (result.best_epoch, result.epochs_run) == (1, 3)


def test_training_learns_discs(tmp_path) -> None:
    cfg = replace(CFG, epochs=25, batch_size=2, lr=0.005, augment=shipped("train.augment", enabled=False))
    result = run(tmp_path, cfg)
    assert result.history[-1]["train_loss"] < 0.6 * result.history[0]["train_loss"]
    assert result.best["dice"] > 0.8


def test_lr_schedule_warms_up_then_decays() -> None:
    factors = [training.lr_factor(s, 10, 100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_cuda_request_without_cuda_fails_clearly() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ParamsError, match="train.device"):
        training.select_device("cuda")
    assert training.select_device("auto").type == "cpu"


def test_soft_maps_and_scores_reach_the_loss_with_their_batch(tmp_path) -> None:
    """With soft maps and scores the loss gets two more arguments each training step: the maps warped like the
    images (here the soft map is the mask itself, so it must match the warped mask wherever the bilinear warp leaves
    it 0 or 1) and each image's score unchanged (here its index: each batch holds distinct images)."""
    x, y = discs(8)
    seen = []

    def loss(outputs, _images, masks, *extra):
        if extra:
            seen.append((masks, *extra))
        return split_outputs(outputs)[0].mean() * 0 + masks.mean()

    cfg = replace(CFG, epochs=1, augment=shipped("train.augment", affine_p=1.0, intensity_p=1.0, speckle_p=0.0))
    train_set = SegmentationSet(x, y, Augment(cfg.augment), cfg.seed, soft=y.astype(np.float32),
                                scores=np.arange(8, dtype=np.float32))
    training.fit(build_model(cfg.model.config()), train_set, x[:2], y[:2], cfg, loss, torch.device("cpu"),
               RecordingLive(), tmp_path / "resume.pt", "soft", desc="test")
    assert len(seen) == len(x) // cfg.batch_size
    indices = []
    for masks, soft, scores in seen:
        assert soft.shape == masks.shape and scores.shape == (len(masks), 1)
        crisp = (soft == 0) | (soft == 1)
        assert crisp.float().mean() > 0.8 and torch.equal(soft[crisp], masks[crisp])
        indices += scores[:, 0].int().tolist()
    assert len(set(indices)) == len(indices) == cfg.batch_size * len(seen) and set(indices) <= set(range(8))


def test_soft_maps_of_another_shape_are_refused() -> None:
    x, y = discs(4)
    with pytest.raises(ValueError, match="soft maps"):
        SegmentationSet(x, y, soft=x[:3])
    with pytest.raises(ValueError, match="scores"):
        SegmentationSet(x, y, scores=np.zeros(3, np.float32))
